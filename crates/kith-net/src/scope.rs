//! How far an address reaches: this machine, a private network, or the internet.
//!
//! Used to keep undialable addresses out of the routing table: a peer's advertised addresses are
//! added only if they are at least as public as the address we reach the peer from (a peer we
//! reach over the internet gets only its global addresses added, a LAN peer its LAN and global
//! ones, a peer on this machine all of them). A node behind NAT whose LAN address a LAN peer
//! confirmed (so it became a DHT server) therefore never lands in an internet peer's table with
//! addresses that peer cannot dial.
//!
//! The benchmarking range 198.18.0.0/15 counts as global on purpose: the network-namespace tests
//! number their "internet" from it.

use std::net::{Ipv4Addr, Ipv6Addr};

use libp2p::{Multiaddr, multiaddr::Protocol};

/// Ordered from most local to most public.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scope {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, CGNAT 100.64.0.0/10, link-local, unique-local IPv6, unspecified.
    Private,
    /// Everything else, including 198.18.0.0/15.
    Global,
}

/// The scope of an address's leading IP component; `None` for addresses that do not start with
/// one (DNS names, memory addresses).
pub(crate) fn addr_scope(addr: &Multiaddr) -> Option<Scope> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(v4_scope(ip)),
        Protocol::Ip6(ip) => Some(v6_scope(ip)),
        _ => None,
    }
}

/// True if a peer we reach from `from` (the scope of our connection to it) can be expected to be
/// dialable by us at `addr`. Addresses without an IP (DNS names) count as global.
pub(crate) fn reachable_from(addr: &Multiaddr, from: Scope) -> bool {
    addr_scope(addr).unwrap_or(Scope::Global) >= from
}

fn v4_scope(ip: Ipv4Addr) -> Scope {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Scope::Loopback
    } else if ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || (a == 100 && (64..128).contains(&b))
    {
        Scope::Private
    } else {
        Scope::Global
    }
}

fn v6_scope(ip: Ipv6Addr) -> Scope {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_scope(v4);
    }
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Scope::Loopback
    } else if ip.is_unspecified() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
        Scope::Private
    } else {
        Scope::Global
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(addr: &str, expect: Option<Scope>) {
        assert_eq!(addr_scope(&addr.parse().unwrap()), expect, "{addr}");
    }

    #[test]
    fn scopes() {
        check("/ip4/127.0.0.1/tcp/1", Some(Scope::Loopback));
        check("/ip6/::1/tcp/1", Some(Scope::Loopback));
        check("/ip4/10.1.2.3/tcp/1", Some(Scope::Private));
        check("/ip4/172.20.0.1/tcp/1", Some(Scope::Private));
        check("/ip4/192.168.1.1/udp/1/quic-v1", Some(Scope::Private));
        check("/ip4/100.64.0.1/tcp/1", Some(Scope::Private));
        check("/ip4/169.254.0.1/tcp/1", Some(Scope::Private));
        check("/ip6/fd00::1/tcp/1", Some(Scope::Private));
        check("/ip6/fe80::1/tcp/1", Some(Scope::Private));
        check("/ip4/198.18.0.1/tcp/1", Some(Scope::Global));
        check("/ip4/1.1.1.1/tcp/1", Some(Scope::Global));
        check("/ip6/2001:db8::1/tcp/1", Some(Scope::Global));
        check("/dns4/example.org/tcp/1", None);
    }

    #[test]
    fn an_internet_peer_gets_only_global_addresses_added() {
        let lan: Multiaddr = "/ip4/192.168.1.5/tcp/4717".parse().unwrap();
        let public: Multiaddr = "/ip4/198.18.0.5/tcp/4717".parse().unwrap();
        let dns: Multiaddr = "/dns4/relay.example.org/tcp/4717".parse().unwrap();
        assert!(!reachable_from(&lan, Scope::Global));
        assert!(reachable_from(&public, Scope::Global));
        assert!(reachable_from(&dns, Scope::Global));
        assert!(reachable_from(&lan, Scope::Private));
        assert!(reachable_from(&lan, Scope::Loopback));
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/4717".parse().unwrap();
        assert!(!reachable_from(&lo, Scope::Private));
    }
}
