//! kith-net: kith's libp2p node.
//!
//! One task owns the [`libp2p::Swarm`]: the [`EventLoop`]. Everyone else talks to it through a
//! cloneable [`Client`] (bounded command channel, `oneshot` replies) and listens to a small closed
//! [`Event`] enum; raw `SwarmEvent`s never leave this crate.
//!
//! ```text
//!   Client ──Command{reply: oneshot}──▶ EventLoop ──owns──▶ Swarm<Behaviour>
//!      ▲                                   │
//!      └──────── oneshot reply ◀───────────┤
//!                                          └──try_send(Event)──▶ consumer (kith-service)
//! ```
//!
//! - [`Config`]: what the node listens on, who it bootstraps from, DHT mode, mDNS, relay role.
//! - [`new`]: builds the swarm and starts listening; returns `(Client, events, EventLoop)`.
//! - [`Metrics`]: Prometheus counters and gauges the loop maintains.
//! - [`ConnectionBudget`]: the connection manager's water marks and idle timeout; the loop trims
//!   and closes idle connections itself (`connmgr` decides which), and [`Client::protect`] names
//!   peers it must keep.
//!
//! The loop never awaits anything but its `select!`: events go out with `try_send` and a full
//! channel is counted as a drop, so a slow consumer can never stall the network.

#[macro_use]
mod forward;
mod admission;
mod autonat_server;
mod behaviour;
mod blob;
mod client;
mod config;
mod connmgr;
pub mod dm;
mod dm_link;
mod error;
mod event;
mod event_loop;
pub mod frame;
mod gate;
mod listen;
mod metrics;
mod nearest;
mod records;
mod routing;
mod scope;

pub use behaviour::gossip_settings;
pub use blob::{BLOB_PROTOCOL, BlobStream, IncomingBlobStreams};
pub use client::Client;
pub use config::{Config, DhtMode, RelayLimits, RelayPolicy};
pub use connmgr::ConnectionBudget;
pub use dm_link::{IN_FLIGHT as DM_LINK_IN_FLIGHT, InboundDmLink, IncomingDmLinks, LINK_PROTOCOL};
pub use error::{NetError, RequestError};
pub use event::{
    Channel, ConnectionInfo, ConnectionPath, DmRequestId, Event, GossipId, GossipVerdict,
    HolePunchAttempt, HolePunchStats, NatStatus, NetStatus, PeerInfo, RelayServed,
};
pub use event_loop::EventLoop;
pub use libp2p::{Multiaddr, PeerId, identity::Keypair};
pub use metrics::Metrics;
pub use records::{GetRecordResult, RecordAnswer, RecordValidator, Validated};

/// The identify protocol version every kith node announces; peers announcing anything else are
/// never added to the DHT routing table.
pub const IDENTIFY_PROTOCOL: &str = "/kith/id/1.0.0";

/// The Kademlia protocol name for a network id: `/kith/kad/1.0.0` for the main network and
/// `/kith/<id>/kad/1.0.0` for any other, so test and private networks never mix with it.
pub fn kad_protocol(network_id: &str) -> String {
    if network_id == "main" {
        "/kith/kad/1.0.0".to_owned()
    } else {
        format!("/kith/{network_id}/kad/1.0.0")
    }
}

/// Builds the node: swarm, behaviours, listeners and bootstrap dials.
///
/// Must be called inside a tokio runtime. The returned [`EventLoop`] does nothing until
/// [`EventLoop::run`] is spawned; events are buffered (up to `config.event_buffer`) until then.
pub fn new(
    config: Config,
    metrics: Metrics,
) -> Result<(Client, tokio::sync::mpsc::Receiver<Event>, EventLoop), NetError> {
    event_loop::build(config, metrics)
}

#[cfg(test)]
mod tests;
