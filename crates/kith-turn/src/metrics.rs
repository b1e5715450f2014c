//! Counters the node exports as metrics; plain atomics so this crate needs no metrics library.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a [`crate::TurnServer`] has done, shared with the node, which reads it into its
/// Prometheus registry (`TurnServer::metrics`).
///
/// `turn` checks `MESSAGE-INTEGRITY` (the password) after asking for the key, out of our sight,
/// so a wrong password shows up here only as an allocation that was never made: there is no
/// counter for it.
#[derive(Debug, Default)]
pub struct TurnMetrics {
    /// Authenticated requests (Allocate, Refresh, CreatePermission, ChannelBind) whose username
    /// was current, so a key was derived for them. Counts requests, not users.
    pub credentials_accepted: AtomicU64,
    /// Authenticated requests refused because the username's expiry had passed.
    pub credentials_expired: AtomicU64,
    /// Authenticated requests refused because the username was malformed, its expiry was too
    /// far ahead or the realm was not ours.
    pub credentials_refused: AtomicU64,
    /// Relayed sockets handed out (one per allocation; an `EVEN-PORT` reservation takes one more).
    pub allocations: AtomicU64,
    /// Allocations refused because `max_allocations` were in use (answered 508).
    pub allocations_refused_full: AtomicU64,
    /// Relayed sockets open now.
    pub allocations_active: AtomicU64,
    /// Datagrams dropped because the peer address is private (see `allow_private_peers`).
    pub peers_denied: AtomicU64,
}

impl TurnMetrics {
    /// Adds one to `counter`.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one from `counter`.
    pub(crate) fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}
