//! The connection manager's decisions, without sockets: which connections to close.
//!
//! gossipsub keeps a stream open on every connection (rust-libp2p #5190), so libp2p's idle timeout
//! never closes anything and a node ends up connected to nearly everyone it ever met. The event
//! loop therefore describes each open connection as a [`Candidate`] every few seconds and closes
//! what these functions pick:
//!
//! - [`select_trims`]: above the high mark (or at it after a refusal), close the least useful
//!   connections until the low mark is reached (go-libp2p's connmgr rule). Protected connections are never picked, nor those
//!   younger than the grace period that were used in the last few seconds ([`YOUNG_QUIET`]), so
//!   trimming can stop above the low mark but never goes below it.
//! - [`select_idle`]: whatever the count, close a connection nobody uses: not protected, no topic
//!   shared with us, and unused for the idle timeout.
//! - [`admits_inbound`] and [`admits_kad_dial`]: at the high mark, the gate lets in only protected
//!   peers, and Kademlia's bootstrap (and walks nobody waits for) dials no new peer, so the count
//!   stays at the mark between rounds; a lookup someone waits for may still pass it.
//! - [`select_duplicates`]: keep one connection per peer. Two nodes that dial each other at once,
//!   an AutoNAT server's dial-back and a hole punch next to its relayed connection each leave a
//!   second connection to the same peer, which carries nothing the first cannot and would count
//!   twice against the marks.
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
    /// The service welcomes the peer (a member of a group we take part in, see
    /// `Client::welcome`): kept before strangers, never protected.
    pub(crate) welcomed: bool,
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
        if self.welcomed {
            value += 50;
        }
        if self.in_routing_table {
            value += 10;
        }
        value
    }
}

/// Above the high mark, a connection inside its grace period may still be trimmed once nothing
/// has used it for this long (nor since it opened). The grace period is for a dial whose request
/// or query has not used the connection yet; Kademlia's requests and answers count as use, so a
/// walk's connection that went quiet after its answer is done with. Without this, a burst of
/// walks (a member sharing its group key with 199 others, each needing a key bundle) kept every
/// connection it opened for the whole grace period, and 200 in-process nodes ran out of file
/// descriptors.
pub(crate) const YOUNG_QUIET: Duration = Duration::from_secs(3);

/// The connections to close when `conns.len()` is above `budget.high`, or at it while someone was
/// refused since the last round (`refused_at_mark`: a stranger at the gate, or a dial of our own
/// Kademlia bootstrap held back, see [`admits_kad_dial`]): the least valuable (then least
/// recently used, then oldest) unprotected connections past the grace period or quiet for
/// [`YOUNG_QUIET`], at most as many as bring the count down to `budget.low`. Empty below the
/// high mark, and at it when nobody was refused.
///
/// Why a refusal counts: the gate refuses strangers from the high mark on, and trimming used to
/// start only above it, so a node that reached its mark exactly and whose connections stayed in
/// use (Kademlia traffic, a shared topic) refused every newcomer for good: a group admin's
/// invitation to such a node was retried for minutes and never got in. After a refusal the next
/// round makes room down to the low mark, and the refused peer's retry finds it.
pub(crate) fn select_trims<K: Clone>(
    conns: &[Candidate<K>],
    budget: &ConnectionBudget,
    now: Instant,
    refused_at_mark: bool,
) -> Vec<K> {
    let over = conns.len() > budget.high || (refused_at_mark && conns.len() >= budget.high);
    if !over {
        return Vec::new();
    }
    let excess = conns.len().saturating_sub(budget.low);
    let mut eligible: Vec<&Candidate<K>> = conns
        .iter()
        .filter(|c| !c.protected && past_youth(c, budget, now))
        .collect();
    eligible.sort_by_key(|c| (c.value(), c.last_used, c.opened));
    eligible
        .into_iter()
        .take(excess)
        .map(|c| c.key.clone())
        .collect()
}

/// Whether a connection is old enough to trim above the high mark: past the grace period, or
/// unused for [`YOUNG_QUIET`] (nor since it opened). [`select_trims`] picks among these, and the
/// event loop's log of a node above its mark counts the others.
pub(crate) fn past_youth<K>(c: &Candidate<K>, budget: &ConnectionBudget, now: Instant) -> bool {
    let quiet = budget.grace.min(YOUNG_QUIET);
    now.saturating_duration_since(c.opened) >= budget.grace
        || now.saturating_duration_since(c.last_used.max(c.opened)) >= quiet
}

/// Whether an inbound connection is taken while the node holds `established` connections:
/// below the high mark, or from a protected peer (see `gate.rs`). Our own dials are not gated:
/// what we dial, we need.
pub(crate) fn admits_inbound(
    established: usize,
    budget: &ConnectionBudget,
    protected: bool,
) -> bool {
    protected || established < budget.high
}

/// Whether Kademlia may dial a peer it is not connected to while the node holds `established`
/// connections: always below the high mark, and at or above it only when a query that someone
/// waits for may need the dial (`maintenance_only` is false: a lookup, a record get or put).
///
/// Why: a bootstrap (one walk per bucket, up to ten in a row) dials dozens of peers a step. On a
/// node at its mark those dials pushed the count past it (young, just-used connections cannot be
/// trimmed), and every peer at its own mark refused them after the handshake, which made the
/// steps slower and the walks longer: 200 nodes spent their first minutes at 33-65 connections
/// against a mark of 32. A held-back dial fails that peer for the bootstrap, which asks the peers
/// it can reach; the refusal also makes the next manager round trim to the low mark (see
/// [`select_trims`]), so the walk goes on there.
pub(crate) fn admits_kad_dial(
    established: usize,
    budget: &ConnectionBudget,
    maintenance_only: bool,
) -> bool {
    !maintenance_only || established < budget.high
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

/// A duplicate younger than this (or than the budget's grace period, if longer: see
/// `EventLoop::duplicates`) is left alone: a dial-back or a request may still be finishing on it.
/// An AutoNAT server's dial-back is a second connection to the peer it tests; closed after 3 s on
/// a loaded machine, before the probe finished, the peer never learned it was reachable and never
/// became a DHT server.
pub(crate) const DUPLICATE_GRACE: Duration = Duration::from_secs(3);

/// One open connection as [`select_duplicates`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link<P, K> {
    /// The remote peer.
    pub(crate) peer: P,
    /// What the caller closes.
    pub(crate) key: K,
    /// We dialed it.
    pub(crate) outbound: bool,
    /// Through a relay circuit.
    pub(crate) relayed: bool,
    /// When it was established.
    pub(crate) opened: Instant,
    /// Something is bound to this very connection (a reservation, a circuit, a pending request,
    /// a blob stream): none of the peer's connections is closed as a duplicate.
    pub(crate) pinned: bool,
}

/// The duplicate connections we close: of each peer's connections, the one both ends keep is the
/// best ranked (direct before relayed, then dialed by the lower peer id, then the oldest), and
/// each end closes only the others **it dialed**, once they are past `grace` (at least
/// [`DUPLICATE_GRACE`]). Both
/// ends rank the same way (who dialed and whether a circuit is used are seen alike at both ends),
/// so they never close both connections of a pair; the oldest only breaks ties among connections
/// the same end dialed, which only that end closes.
pub(crate) fn select_duplicates<P: Ord + Clone, K: Clone>(
    local: &P,
    links: &[Link<P, K>],
    now: Instant,
    grace: Duration,
) -> Vec<K> {
    let grace = grace.max(DUPLICATE_GRACE);
    let mut by_peer: std::collections::BTreeMap<&P, Vec<&Link<P, K>>> = Default::default();
    for link in links {
        by_peer.entry(&link.peer).or_default().push(link);
    }
    let mut close = Vec::new();
    for (peer, mut conns) in by_peer {
        if conns.len() < 2 || conns.iter().any(|c| c.pinned) {
            continue;
        }
        // Dialed by the lower peer id: ours when we are lower and it is outbound, or the other
        // way round.
        let by_lower = |c: &Link<P, K>| (local < peer) == c.outbound;
        conns.sort_by_key(|c| (c.relayed, !by_lower(c), c.opened));
        close.extend(
            conns
                .iter()
                .skip(1)
                .filter(|c| c.outbound && now.saturating_duration_since(c.opened) >= grace)
                .map(|c| c.key.clone()),
        );
    }
    close
}

#[cfg(test)]
mod tests;
