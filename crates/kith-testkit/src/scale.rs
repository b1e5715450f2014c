//! The reduced settings of "scale" nodes: many in-process kith nodes on one machine, as
//! kith-bench's `scale` scenario and the 200-member group test (tests/it/scale.rs) run them. One
//! definition, so the test exercises exactly what the benchmark measures.

use std::time::Duration;

use kith_net::{Config, ConnectionBudget};
use kith_service::Options;

/// The connection manager's low water mark on a scale node: sized for a thousand nodes on one
/// machine.
pub const SCALE_CONNECTIONS_LOW: usize = 24;
/// The high water mark; see [`SCALE_CONNECTIONS_LOW`].
pub const SCALE_CONNECTIONS_HIGH: usize = 32;
/// Kademlia's query timeout on a scale node.
pub const SCALE_QUERY_TIMEOUT: Duration = Duration::from_secs(20);
/// libp2p's idle connection timeout on a scale node (the raw swarms' value).
pub const SCALE_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// `config` with the scale network settings: small buffers, a 20 s query timeout, raw's 5 s
/// idle timeout, and the connection manager trimming to [`SCALE_CONNECTIONS_LOW`] above
/// [`SCALE_CONNECTIONS_HIGH`].
///
/// The grace period and idle time are the query timeout, so a connection a query opened
/// outlives the query. (Kademlia's requests and answers now count as use of a connection; before
/// they did, a 5 s grace and idle time closed the connections of every walk that took longer than
/// 5 s on a loaded machine.)
pub fn scale_config(mut config: Config) -> Config {
    config.idle_timeout = SCALE_IDLE_TIMEOUT;
    config.query_timeout = SCALE_QUERY_TIMEOUT;
    config.event_buffer = 64;
    config.command_buffer = 16;
    config.with_connections(ConnectionBudget {
        low: SCALE_CONNECTIONS_LOW,
        high: SCALE_CONNECTIONS_HIGH,
        grace: SCALE_QUERY_TIMEOUT,
        idle_timeout: SCALE_QUERY_TIMEOUT,
    })
}

/// Service options of a scale node: what a join costs is a node start and its bootstrap,
/// nothing on a timer. Name claims, key bundles and mailbox pointers are not re-published (the
/// first run would come 3 s after every join, a DHT put walk each, a thousand of them while the
/// network grows); whoever needs them published publishes them. Names use a
/// `name_difficulty`-bit proof of work.
pub fn scale_options(name_difficulty: u8) -> Options {
    let mut options = Options {
        republish_every: Duration::from_secs(3600),
        first_republish_after: Duration::from_secs(3600),
        group_sync_every: Duration::from_secs(10),
        dm_rate: (1e9, 1e9),
        ..Options::default()
    };
    options.name_rules.difficulty = name_difficulty;
    options
}
