//! The connection manager's decisions, without sockets: which connections to close.
//!
//! gossipsub keeps a stream open on every connection (rust-libp2p #5190), so libp2p's idle timeout
//! never closes anything and a node ends up connected to nearly everyone it ever met. The event
//! loop therefore describes each open connection as a [`Candidate`] every few seconds and closes
//! what these functions pick:
//!
//! - [`select_trims`]: above the high mark, close the least useful connections until the low mark
//!   is reached (go-libp2p's connmgr rule). Protected connections and those younger than the grace
//!   period are never picked, so trimming can stop above the low mark but never goes below it.
//! - [`select_idle`]: whatever the count, close a connection nobody uses: not protected, no topic
//!   shared with us, and unused for the idle timeout.
//!
//! Usefulness ([`Candidate::value`]): a shared gossipsub topic (a group we are in) weighs most, then
//! a place in our Kademlia routing table; ties go to the connection used least recently.

use std::time::{Duration, Instant};

/// Low and high water marks, grace period and idle timeout of the connection manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// Trimming stops here. Default 64 for a personal node, 2,000 for a relay.
    pub low: usize,
    /// Trimming starts above this many connections. Default 96 for a personal node, 3,000 for a
    /// relay.
    pub high: usize,
    /// A connection younger than this is never trimmed: it may be a dial made for a request or a
    /// query that has not used it yet. Default 20 s.
    pub grace: Duration,
    /// A connection that carries no topic of ours, no request, no circuit and no protected peer
    /// closes after this long unused, even though gossipsub's handler would keep it. Default 2 min.
    pub idle_timeout: Duration,
}

impl ConnectionBudget {
    /// Sized for a personal node: enough for its groups, contacts, relays and a Kademlia
    /// neighbourhood, far below the near-full mesh gossipsub would otherwise keep.
    pub fn personal() -> Self {
        Self {
            low: 64,
            high: 96,
            grace: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(120),
        }
    }

    /// Sized for a community relay, which holds a reservation connection for every node it serves.
    pub fn relay() -> Self {
        Self {
            low: 2000,
            high: 3000,
            ..Self::personal()
        }
    }
}

/// One open connection as the manager sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate<K> {
    /// What the caller closes (a connection id in the event loop).
    pub(crate) key: K,
    /// Never closed by the manager: a tagged peer, a relay we use, a pending request, a circuit, a
    /// reservation we serve, an open blob stream.
    pub(crate) protected: bool,
    /// The peer is subscribed to a gossipsub topic we are subscribed to.
    pub(crate) shares_topic: bool,
    /// The peer is in our Kademlia routing table.
    pub(crate) in_routing_table: bool,
    /// When the connection was established.
    pub(crate) opened: Instant,
    /// When the peer last exchanged something we care about (a request, a response, a group
    /// message); `opened` until then.
    pub(crate) last_used: Instant,
}

impl<K> Candidate<K> {
    /// How useful the connection is beyond recency; higher is kept longer.
    pub(crate) fn value(&self) -> u32 {
        let mut value = 0;
        if self.shares_topic {
            value += 100;
        }
        if self.in_routing_table {
            value += 10;
        }
        value
    }
}

/// The connections to close when `conns.len()` is above `budget.high`: the least valuable (then
/// least recently used, then oldest) unprotected connections past the grace period, at most as
/// many as bring the count down to `budget.low`. Empty at or below the high mark.
pub(crate) fn select_trims<K: Clone>(
    conns: &[Candidate<K>],
    budget: &ConnectionBudget,
    now: Instant,
) -> Vec<K> {
    if conns.len() <= budget.high {
        return Vec::new();
    }
    let excess = conns.len().saturating_sub(budget.low);
    let mut eligible: Vec<&Candidate<K>> = conns
        .iter()
        .filter(|c| !c.protected && now.saturating_duration_since(c.opened) >= budget.grace)
        .collect();
    eligible.sort_by_key(|c| (c.value(), c.last_used, c.opened));
    eligible
        .into_iter()
        .take(excess)
        .map(|c| c.key.clone())
        .collect()
}

/// The connections nobody uses: not protected, sharing no topic with us, unused for
/// `budget.idle_timeout`.
pub(crate) fn select_idle<K: Clone>(
    conns: &[Candidate<K>],
    budget: &ConnectionBudget,
    now: Instant,
) -> Vec<K> {
    conns
        .iter()
        .filter(|c| {
            !c.protected
                && !c.shares_topic
                && now.saturating_duration_since(c.last_used) >= budget.idle_timeout
        })
        .map(|c| c.key.clone())
        .collect()
}

#[cfg(test)]
mod tests;
