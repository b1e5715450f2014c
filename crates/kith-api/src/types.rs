//! The JSON bodies of the API. These are the stable contract for the CLI's `--json` output, the
//! web app and scripts: add fields, never rename or remove them.

use std::time::SystemTime;

use kith_service::Status;
use serde::{Deserialize, Serialize};

/// `GET /v1/status` and `kith status --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// This node's peer id.
    pub peer_id: String,
    /// kith version.
    pub version: String,
    /// Addresses the node listens on.
    pub listen_addrs: Vec<String>,
    /// Confirmed external addresses.
    pub external_addrs: Vec<String>,
    /// Peers with an open connection.
    pub connected_peers: usize,
    /// Peers in the DHT routing table.
    pub routing_table_peers: usize,
    /// Records held in the local DHT store.
    pub dht_records: usize,
    /// Configured DHT mode: `auto`, `server` or `client`.
    pub dht_mode: String,
    /// Whether the DHT currently answers others' queries.
    pub dht_server: bool,
    /// Reachability: `unknown`, `public` or `private`.
    pub nat: String,
    /// The address AutoNAT confirmed, when `nat` is `public`.
    pub nat_addr: Option<String>,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Peers in the address book.
    pub known_peers: usize,
    /// Bytes the store occupies on disk.
    pub store_bytes: u64,
    /// Network events dropped because the service fell behind.
    pub events_dropped: u64,
}

impl From<Status> for StatusReport {
    fn from(s: Status) -> Self {
        let strings = |v: &[libp2p::Multiaddr]| v.iter().map(ToString::to_string).collect();
        Self {
            peer_id: s.net.peer_id.to_string(),
            version: s.version.to_owned(),
            listen_addrs: strings(&s.net.listen_addrs),
            external_addrs: strings(&s.net.external_addrs),
            connected_peers: s.net.connected_peers,
            routing_table_peers: s.net.routing_table_peers,
            dht_records: s.net.dht_records,
            dht_mode: match s.net.dht_mode {
                kith_net::DhtMode::Auto => "auto",
                kith_net::DhtMode::Server => "server",
                kith_net::DhtMode::Client => "client",
            }
            .to_owned(),
            dht_server: s.net.dht_server,
            nat: s.net.nat.to_string(),
            nat_addr: match &s.net.nat {
                kith_net::NatStatus::Public { addr } => Some(addr.to_string()),
                _ => None,
            },
            uptime_secs: s.uptime.as_secs(),
            known_peers: s.known_peers,
            store_bytes: s.store_bytes,
            events_dropped: s.events_dropped,
        }
    }
}

/// One entry of `GET /v1/peers` and `kith peers --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerReport {
    /// The peer's id.
    pub peer_id: String,
    /// Remote addresses of the open connections.
    pub addrs: Vec<String>,
    /// Protocols it announced.
    pub protocols: Vec<String>,
    /// Its agent string.
    pub agent: String,
    /// `inbound` or `outbound` (of the oldest open connection).
    pub direction: String,
    /// Seconds since the first open connection was established.
    pub connected_secs: u64,
}

impl From<kith_net::PeerInfo> for PeerReport {
    fn from(p: kith_net::PeerInfo) -> Self {
        Self {
            peer_id: p.peer_id.to_string(),
            addrs: p.addrs.iter().map(ToString::to_string).collect(),
            protocols: p.protocols,
            agent: p.agent,
            direction: if p.inbound { "inbound" } else { "outbound" }.to_owned(),
            connected_secs: SystemTime::now()
                .duration_since(p.connected_since)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// What went wrong, in words a user can act on.
    pub error: String,
}
