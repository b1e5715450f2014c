//! kith-testkit: the one way to start kith nodes in tests and benchmarks.
//!
//! Before this crate the in-process harness lived in `tests/it/harness.rs`, kith-bench started
//! its nodes with its own copy of the same steps, and the raw frame codec for hostile-peer tests
//! was written four times. Now:
//!
//! - [`TestNode`]: a real [`kith_service::Node`] on 127.0.0.1 with its own temporary home,
//!   identity and pickle key; [`TestNode::restart`], [`TestNode::stop_keeping_home`] and
//!   [`StoppedNode`] stop and start it again from the same home. Built from [`loopback_config`],
//!   [`start_node`], [`listen_addrs`] (listen-address polling) and [`reopen_store_at`] (store
//!   open that waits out sled's lock release after a shutdown), which kith-bench's clusters use
//!   with their own store and network settings.
//! - Topologies: [`star`], [`star_with`], [`chain_with`], [`node_pair`], [`wait_for_mesh`].
//! - Hostile peers: [`LyingHolder`] (a DHT holder that serves anything), [`RawPeer`] (a bare
//!   swarm that writes any bytes on a kith protocol), with the frame codec in [`frame`] (kith-net's
//!   own, re-exported, so there is one), and [`RawDht`] (a bare Kademlia server that names only
//!   the peers a test gives it).
//! - Bounded waits: [`wait_until`], [`poll_until`], [`holds_for`].
//! - [`metric_value`]: one series out of a node's metrics text.
//!
//! Nodes never listen on anything but 127.0.0.1, mDNS is off and the network id is
//! [`NETWORK_ID`] (kith-bench uses its own), so nothing started here can meet a node of the main
//! network. The white-box probes tests need (raw DHT lookups, hostile actions) are
//! [`kith_service::Probe`], which this crate turns on with kith-service's `testing` feature.

mod liar;
mod network;
mod node;
mod poll;
mod raw;
mod raw_dht;
mod scale;

pub use kith_net::frame;
pub use liar::LyingHolder;
pub use network::{
    chain_with, node_pair, routing_report, shutdown_all, star, star_with, wait_for_mesh,
};
pub use node::{
    NETWORK_ID, POLL, STEP, StoppedNode, TEST_NAME_DIFFICULTY, TestNode, Transports, listen_addrs,
    loopback_config, name_options, open_store_at, reopen_store_at, start_node,
};
pub use poll::{ask_driver, holds_for, poll_until, wait_until};
pub use raw::{Answer as RawAnswer, RawPeer};
pub use raw_dht::RawDht;
pub use scale::{
    SCALE_CONNECTIONS_HIGH, SCALE_CONNECTIONS_LOW, SCALE_IDLE_TIMEOUT, SCALE_QUERY_TIMEOUT,
    scale_config, scale_options,
};

/// The value of an unlabelled series in Prometheus text output.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}
