//! What a [`crate::TurnServer`] binds, advertises and accepts.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::credentials::MAX_CREDENTIAL_TTL;

/// The shortest shared secret [`crate::TurnServer::start`] accepts, in bytes: anyone who knows
/// the secret can mint credentials, so it must not be guessable.
pub const MIN_SECRET_LEN: usize = 16;

/// Configuration of an embedded STUN/TURN server.
///
/// Built with [`TurnConfig::new`] (the three values with no sensible default) and adjusted with
/// the `with_*` setters; every default is documented on its field.
/// `Debug` does not print the secret.
#[derive(Clone)]
#[non_exhaustive]
pub struct TurnConfig {
    /// The UDP address the server listens on for STUN and TURN, e.g. `0.0.0.0:3478`.
    /// Port 0 picks a free port (read it back with `TurnServer::local_addr`).
    /// Relayed sockets are bound on this address's IP when it is of `relay_ip`'s family, else on
    /// the unspecified address of that family.
    pub listen: SocketAddr,
    /// The address put in relayed candidates (`XOR-RELAYED-ADDRESS`): the relay's public IP as
    /// peers on the Internet see it (coturn's `external-ip`). `127.0.0.1` in tests.
    /// Its family is the one relayed addresses are offered in: make it IPv4, since browsers
    /// allocate IPv4 relayed addresses unless they ask otherwise.
    pub relay_ip: IpAddr,
    /// The TURN realm sent to clients and mixed into the long-term key.
    /// Default `"kith"`; clients learn it from the server, so it needs no coordination.
    pub realm: String,
    /// The shared secret credentials are minted with ([`crate::Credentials::mint`]).
    /// At least [`MIN_SECRET_LEN`] bytes; 32 random bytes is the intended use.
    pub secret: Vec<u8>,
    /// How many allocations (relayed addresses, one UDP socket each) may exist at once; an
    /// Allocate beyond it is answered 508 Insufficient Capacity. 0 serves STUN only.
    /// Default 256 (a call through TURN takes one per side that needs it).
    pub max_allocations: usize,
    /// The UDP ports relayed sockets are bound in (inclusive), for a firewall that opens only a
    /// range. `None` (the default) lets the OS pick ephemeral ports.
    pub relay_ports: Option<RangeInclusive<u16>>,
    /// How far in the future a username's expiry may lie. Default [`MAX_CREDENTIAL_TTL`] (24 h).
    pub max_credential_ttl: Duration,
    /// Whether relayed data may go to (and come from) loopback, private, link-local, shared
    /// (100.64/10), unique-local, multicast and unspecified peer addresses. Default `false`, like
    /// coturn's `denied-peer-ip` advice: otherwise any user of the relay could send UDP to
    /// services on the relay's own host or LAN. Tests on 127.0.0.1 and LAN-only relays set it.
    pub allow_private_peers: bool,
}

impl TurnConfig {
    /// A configuration listening on `listen`, advertising `relay_ip` in relayed candidates and
    /// accepting credentials minted with `secret`; the other fields take their defaults.
    pub fn new(listen: SocketAddr, relay_ip: IpAddr, secret: impl Into<Vec<u8>>) -> TurnConfig {
        TurnConfig {
            listen,
            relay_ip,
            realm: "kith".to_owned(),
            secret: secret.into(),
            max_allocations: 256,
            relay_ports: None,
            max_credential_ttl: MAX_CREDENTIAL_TTL,
            allow_private_peers: false,
        }
    }

    /// Sets [`TurnConfig::realm`].
    pub fn with_realm(mut self, realm: impl Into<String>) -> TurnConfig {
        self.realm = realm.into();
        self
    }

    /// Sets [`TurnConfig::max_allocations`].
    pub fn with_max_allocations(mut self, max_allocations: usize) -> TurnConfig {
        self.max_allocations = max_allocations;
        self
    }

    /// Sets [`TurnConfig::relay_ports`].
    pub fn with_relay_ports(mut self, ports: RangeInclusive<u16>) -> TurnConfig {
        self.relay_ports = Some(ports);
        self
    }

    /// Sets [`TurnConfig::max_credential_ttl`].
    pub fn with_max_credential_ttl(mut self, ttl: Duration) -> TurnConfig {
        self.max_credential_ttl = ttl;
        self
    }
}

impl TurnConfig {
    /// Sets [`TurnConfig::allow_private_peers`].
    pub fn with_allow_private_peers(mut self, allow: bool) -> TurnConfig {
        self.allow_private_peers = allow;
        self
    }
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("listen", &self.listen)
            .field("relay_ip", &self.relay_ip)
            .field("realm", &self.realm)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("max_allocations", &self.max_allocations)
            .field("relay_ports", &self.relay_ports)
            .field("max_credential_ttl", &self.max_credential_ttl)
            .field("allow_private_peers", &self.allow_private_peers)
            .finish()
    }
}
