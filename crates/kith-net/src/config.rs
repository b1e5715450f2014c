use std::{sync::Arc, time::Duration};

use libp2p::{Multiaddr, identity::Keypair};

use crate::{ConnectionBudget, RecordValidator};

/// Whether this node answers DHT queries for others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DhtMode {
    /// Client until the node has a confirmed external address (AutoNAT, relay reservation or
    /// `--external-addr`), then server. Right for nodes behind NAT: they do not poison other
    /// nodes' routing tables with addresses nobody can dial.
    #[default]
    Auto,
    /// Always answer queries. Relays, bootstrap nodes and nodes on a LAN or loopback.
    Server,
    /// Never answer queries.
    Client,
}

/// Limits a community relay applies to the circuits it carries. The stock libp2p limits
/// (2 minutes, 128 KiB per circuit) suit a hole-punching handshake, not a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once. Default 1,024.
    pub max_reservations: usize,
    /// Reservations per peer. Default 4.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before renewal. Default 1 hour.
    pub reservation_duration: Duration,
    /// Circuits at once. Default 256.
    pub max_circuits: usize,
    /// Circuits per peer. Default 16.
    pub max_circuits_per_peer: usize,
    /// Lifetime of one circuit. Default 1 hour.
    pub max_circuit_duration: Duration,
    /// Bytes one circuit may carry (both ways). Default 64 MiB.
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 1024,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 256,
            max_circuits_per_peer: 16,
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 64 * 1024 * 1024,
        }
    }
}

/// When a personal node listens through its relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayPolicy {
    /// Once AutoNAT says we are not reachable directly.
    #[default]
    WhenPrivate,
    /// From the start (networks where direct dials are known to fail).
    Always,
    /// Never.
    Never,
}

/// Everything the network layer needs to start. Built by `node/` from CLI flags and `bootstrap.toml`.
#[derive(Clone)]
pub struct Config {
    /// The node's identity; its public key is the peer id.
    pub keypair: Keypair,
    /// Network id from `bootstrap.toml`; namespaces the Kademlia protocol (see [`crate::kad_protocol`]).
    pub network_id: String,
    /// Addresses to listen on. Empty means the defaults: TCP and QUIC on all IPv4 interfaces on
    /// [`Config::default_port`], or a random port when that one is taken.
    pub listen: Vec<Multiaddr>,
    /// The fixed port tried first when `listen` is empty. Default 4717.
    pub default_port: u16,
    /// Bootstrap nodes. Entries with `/p2p/<id>` go straight into the routing table; entries
    /// without one are dialed and identified first. Unreachable entries are reported, not fatal.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses other nodes can reach us at (a relay's public address). Confirmed immediately,
    /// which also switches [`DhtMode::Auto`] to server.
    pub external_addrs: Vec<Multiaddr>,
    /// LAN discovery. Default on; tests and servers switch it off.
    pub mdns: bool,
    /// See [`DhtMode`].
    pub dht_mode: DhtMode,
    /// Community relay role: serve circuit relay v2 and AutoNAT v2 to others, force DHT server.
    pub relay_server: bool,
    /// Limits of the relay role.
    pub relay_limits: RelayLimits,
    /// Relays this node may listen through (bootstrap entries marked `relay = true`), each with
    /// `/p2p/<relay id>`.
    pub relays: Vec<Multiaddr>,
    /// When to listen through them.
    pub relay_policy: RelayPolicy,
    /// How long a connection with no open streams stays up. Default 60 s (libp2p's 10 s causes
    /// redial churn in a chat).
    pub idle_timeout: Duration,
    /// Hard upper bound on established connections, beyond which new ones are refused. Default
    /// 256; the effective bound is never below 1.25 × the high mark of [`Config::connections`], so
    /// trimming, not refusal, is what keeps the count down.
    pub max_connections: u32,
    /// The connection manager's marks, grace period and idle timeout. `None` (the default) picks
    /// by role: [`ConnectionBudget::personal`] (64/96), or [`ConnectionBudget::relay`]
    /// (2,000/3,000) when [`Config::relay_server`] is set.
    pub connections: Option<ConnectionBudget>,
    /// Capacity of the event channel to the consumer; events beyond it are dropped and counted.
    pub event_buffer: usize,
    /// Capacity of the command channel from [`crate::Client`]s.
    pub command_buffer: usize,
    /// identify agent string, e.g. `kith/0.1.0`.
    pub agent_version: String,
    /// Kademlia query timeout. Default 30 s.
    pub query_timeout: Duration,
    /// How long a direct-message request may take, dial included. Default 20 s.
    pub dm_timeout: Duration,
    /// Whether direct messages to a peer that was just reached go on a long-lived link
    /// (`/kith/dm-link/1.0.0`, see `dm_link`) rather than a stream per message. Default on; off
    /// measures the per-message path, or talks to nodes as an older node would.
    pub dm_links: bool,
    /// How long a direct-message link stays open with nothing on it. Default 15 s: a
    /// conversation's next message usually comes sooner, and an idle link must not keep the
    /// connection manager from closing a connection nobody uses.
    pub dm_link_idle: Duration,
    /// Rules for DHT records. Without one, every inbound record is refused and every answer to a
    /// GET is returned unchecked.
    pub record_validator: Option<Arc<dyn RecordValidator>>,
    /// The network's peer-id difficulty (`bootstrap.toml` `[network] peer_id_difficulty`): only
    /// peers whose id is worked at it (`kith_core::id_work`) enter the routing table and count
    /// as holders of a GET's answers, so a DHT server costs `2^d` key generations. 0 (the
    /// default) admits every peer. A node whose own id is not worked stays a DHT client.
    pub peer_id_difficulty: u8,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("peer_id", &self.keypair.public().to_peer_id())
            .field("network_id", &self.network_id)
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("mdns", &self.mdns)
            .field("dht_mode", &self.dht_mode)
            .field("relay_server", &self.relay_server)
            .field("record_validator", &self.record_validator.is_some())
            .field("peer_id_difficulty", &self.peer_id_difficulty)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration with documented defaults for the given identity.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            network_id: "main".to_owned(),
            listen: Vec::new(),
            default_port: 4717,
            bootstrap: Vec::new(),
            external_addrs: Vec::new(),
            mdns: true,
            dht_mode: DhtMode::Auto,
            relay_server: false,
            relay_limits: RelayLimits::default(),
            relays: Vec::new(),
            relay_policy: RelayPolicy::WhenPrivate,
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            connections: None,
            event_buffer: 1024,
            command_buffer: 256,
            agent_version: format!("kith/{}", env!("CARGO_PKG_VERSION")),
            query_timeout: Duration::from_secs(30),
            dm_timeout: Duration::from_secs(20),
            dm_links: true,
            dm_link_idle: Duration::from_secs(15),
            record_validator: None,
            peer_id_difficulty: 0,
        }
    }

    /// Sets the listen addresses.
    pub fn with_listen(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.listen = addrs;
        self
    }

    /// Sets the bootstrap list.
    pub fn with_bootstrap(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.bootstrap = addrs;
        self
    }

    /// Switches mDNS on or off.
    pub fn with_mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Sets the DHT mode.
    pub fn with_dht_mode(mut self, mode: DhtMode) -> Self {
        self.dht_mode = mode;
        self
    }

    /// Sets the DHT record rules.
    pub fn with_record_validator(mut self, validator: Arc<dyn RecordValidator>) -> Self {
        self.record_validator = Some(validator);
        self
    }

    /// Sets the connection manager's marks and timeouts (see [`Config::connections`]).
    pub fn with_connections(mut self, budget: ConnectionBudget) -> Self {
        self.connections = Some(budget);
        self
    }

    /// The connection budget in force: the configured one, else the default for the role.
    pub fn connection_budget(&self) -> ConnectionBudget {
        self.connections.unwrap_or(if self.relay_server {
            ConnectionBudget::relay()
        } else {
            ConnectionBudget::personal()
        })
    }

    /// Sets the network's peer-id difficulty (see [`Config::peer_id_difficulty`]).
    pub fn with_peer_id_difficulty(mut self, difficulty: u8) -> Self {
        self.peer_id_difficulty = difficulty;
        self
    }

    /// Sets the network id.
    pub fn with_network_id(mut self, id: impl Into<String>) -> Self {
        self.network_id = id.into();
        self
    }
}
