use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Direction of a counted message.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelValue)]
pub(crate) enum Kind {
    /// Gossipsub group traffic.
    Gossip,
    /// Direct-message frames.
    Dm,
}

/// Label set for message counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    /// Which protocol carried the message.
    pub(crate) kind: Kind,
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub(crate) enum Direction {
    /// The peer dialed us.
    Inbound,
    /// We dialed the peer.
    Outbound,
}

/// Label set for connection gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabel {
    /// Who dialed.
    pub(crate) direction: Direction,
}

/// How a hole-punching attempt ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub(crate) enum Outcome {
    /// A direct connection replaced the relayed path.
    Succeeded,
    /// The relay keeps carrying the traffic.
    Failed,
}

/// Label set for hole-punching counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    /// How it ended.
    pub(crate) outcome: Outcome,
}

/// The network's Prometheus metrics. Cheap to clone; all clones update the same series.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    peers_connected: Gauge,
    routing_table_peers: Gauge,
    dht_records: Gauge,
    connections_established: Counter,
    dial_failures: Counter,
    events_dropped: Counter,
    messages_in: Family<KindLabel, Counter>,
    messages_out: Family<KindLabel, Counter>,
    dht_puts_rejected: Counter,
    dht_answers_rejected: Counter,
    dht_referrals_refused: Counter,
    dht_dials_held_back: Counter,
    dm_frames_rejected: Counter,
    peers_not_kith: Counter,
    connections: Family<DirectionLabel, Gauge>,
    connections_trimmed: Counter,
    connections_refused: Counter,
    connections_idle_closed: Counter,
    hole_punches: Family<OutcomeLabel, Counter>,
}

impl Metrics {
    /// Registers every series under `registry` (prefix it with `kith_` via a sub-registry).
    pub fn register(&self, registry: &mut Registry) {
        let i = &self.inner;
        registry.register(
            "peers_connected",
            "Peers with at least one open connection",
            i.peers_connected.clone(),
        );
        registry.register(
            "dht_routing_table_peers",
            "Peers in the Kademlia routing table",
            i.routing_table_peers.clone(),
        );
        registry.register(
            "dht_records",
            "Records in the local DHT store",
            i.dht_records.clone(),
        );
        registry.register(
            "connections_established",
            "Connections established",
            i.connections_established.clone(),
        );
        registry.register(
            "dial_failures",
            "Outgoing dials that failed",
            i.dial_failures.clone(),
        );
        registry.register(
            "events_dropped",
            "Network events dropped because the consumer was behind",
            i.events_dropped.clone(),
        );
        registry.register(
            "messages_in",
            "Messages received, by protocol",
            i.messages_in.clone(),
        );
        registry.register(
            "messages_out",
            "Messages sent, by protocol",
            i.messages_out.clone(),
        );
        registry.register(
            "dht_puts_rejected",
            "Inbound DHT records refused by validation",
            i.dht_puts_rejected.clone(),
        );
        registry.register(
            "dht_answers_rejected",
            "Answers to our DHT lookups refused by validation",
            i.dht_answers_rejected.clone(),
        );
        registry.register(
            "dht_referrals_refused",
            "Peers named in answers to our DHT lookups and left out of them: ids not worked at the network's peer-id difficulty",
            i.dht_referrals_refused.clone(),
        );
        registry.register(
            "dht_dials_held_back",
            "Dials a DHT bootstrap wanted while the node held its high water mark of connections, not made",
            i.dht_dials_held_back.clone(),
        );
        registry.register(
            "dm_frames_rejected",
            "Inbound /kith/dm and /kith/mailbox frames refused before decoding (oversized, truncated)",
            i.dm_frames_rejected.clone(),
        );
        registry.register(
            "peers_not_kith",
            "Identified peers that do not speak kith and were kept out of the DHT",
            i.peers_not_kith.clone(),
        );
        registry.register(
            "connections",
            "Open connections, by who dialed",
            i.connections.clone(),
        );
        registry.register(
            "connections_trimmed",
            "Connections the connection manager closed to get back under its high water mark",
            i.connections_trimmed.clone(),
        );
        registry.register(
            "connections_refused",
            "Inbound connections refused at the high water mark (protected peers are let in)",
            i.connections_refused.clone(),
        );
        registry.register(
            "connections_idle_closed",
            "Connections closed because nothing used them for the idle timeout",
            i.connections_idle_closed.clone(),
        );
        registry.register(
            "hole_punches",
            "DCUtR hole-punching attempts, by outcome",
            i.hole_punches.clone(),
        );
    }

    pub(crate) fn set_connections(&self, direction: Direction, n: usize) {
        self.inner
            .connections
            .get_or_create(&DirectionLabel { direction })
            .set(gauge_value(n));
    }
    pub(crate) fn connection_trimmed(&self) {
        self.inner.connections_trimmed.inc();
    }
    pub(crate) fn connection_idle_closed(&self) {
        self.inner.connections_idle_closed.inc();
    }
    pub(crate) fn hole_punch(&self, succeeded: bool) {
        let outcome = if succeeded {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        };
        self.inner
            .hole_punches
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
    pub(crate) fn set_peers_connected(&self, n: usize) {
        self.inner.peers_connected.set(gauge_value(n));
    }
    pub(crate) fn set_routing_table_peers(&self, n: usize) {
        self.inner.routing_table_peers.set(gauge_value(n));
    }
    pub(crate) fn set_dht_records(&self, n: usize) {
        self.inner.dht_records.set(gauge_value(n));
    }
    pub(crate) fn connection_established(&self) {
        self.inner.connections_established.inc();
    }
    pub(crate) fn dial_failed(&self) {
        self.inner.dial_failures.inc();
    }
    pub(crate) fn event_dropped(&self) {
        self.inner.events_dropped.inc();
    }
    pub(crate) fn dht_put_rejected(&self) {
        self.inner.dht_puts_rejected.inc();
    }
    /// The counter the codecs increment themselves: request-response never reports a frame
    /// that failed to read to the behaviour.
    pub(crate) fn frames_rejected_counter(&self) -> Counter {
        self.inner.dm_frames_rejected.clone()
    }
    /// The counter the Kademlia wrapper increments itself (`behaviour::TrackedKad`): the answers
    /// it filters never reach the event loop.
    pub(crate) fn dht_referrals_refused_counter(&self) -> Counter {
        self.inner.dht_referrals_refused.clone()
    }
    /// The counter the Kademlia wrapper increments for the bootstrap dials it holds back at the
    /// high mark: they never reach the swarm.
    pub(crate) fn dht_dials_held_back_counter(&self) -> Counter {
        self.inner.dht_dials_held_back.clone()
    }
    /// The counter the inbound gate increments itself (`gate.rs`): its refusals never reach the
    /// event loop as events of their own.
    pub(crate) fn connections_refused_counter(&self) -> Counter {
        self.inner.connections_refused.clone()
    }
    pub(crate) fn message_out(&self, kind: Kind) {
        self.inner
            .messages_out
            .get_or_create(&KindLabel { kind })
            .inc();
    }
    pub(crate) fn dht_answer_rejected(&self) {
        self.inner.dht_answers_rejected.inc();
    }
    pub(crate) fn peer_not_kith(&self) {
        self.inner.peers_not_kith.inc();
    }
    pub(crate) fn message_in(&self, kind: Kind) {
        self.inner
            .messages_in
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    /// Events dropped so far (for tests and `kith status`).
    pub fn events_dropped(&self) -> u64 {
        self.inner.events_dropped.get()
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
