//! DHT record validation hook.
//!
//! Kademlia with `StoreInserts::FilterBoth` hands every inbound PUT to the application, and it never
//! validates what a GET returns. The rules for what a valid record is live above this crate (names
//! in `kith-core`), so the event loop asks a [`RecordValidator`] both when peers store records
//! here and when answers to our own GETs arrive.

use std::time::SystemTime;

use libp2p::PeerId;

/// What a validator learned about a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// Answers with the same class agree with each other (for names: the owner's peer id).
    pub class: Vec<u8>,
    /// When the record stops being valid; holders drop it then.
    pub expires: Option<SystemTime>,
}

/// Application rules for DHT records. Implementations must be cheap: they run on the network
/// event loop.
pub trait RecordValidator: Send + Sync + 'static {
    /// Checks a record for `key`; `Err` carries a short reason for logs and metrics.
    fn validate(&self, key: &[u8], value: &[u8]) -> Result<Validated, String>;

    /// Whether a valid `incoming` record may replace the valid `stored` one (first come, first
    /// served for names: only the owner may replace, and only with a newer version).
    fn may_replace(&self, key: &[u8], stored: &[u8], incoming: &[u8]) -> bool;
}

/// One valid answer to a GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAnswer {
    /// The holder that returned it; `None` for our own store.
    pub holder: Option<PeerId>,
    /// The record's value.
    pub value: Vec<u8>,
}

/// The result of a GET: every valid answer and how many invalid ones were dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetRecordResult {
    /// Valid answers, in arrival order.
    pub answers: Vec<RecordAnswer>,
    /// Answers the validator refused, and answers from holders whose peer id is not worked at
    /// the network's peer-id difficulty ([`crate::Config::peer_id_difficulty`]).
    pub rejected: usize,
    /// How many nodes the network has, estimated from our routing table when the answer was
    /// sent (`kith_core::density::estimate_network_size`); `None` with an empty table. Resolvers
    /// judge how closely holders may plausibly crowd around a key by it.
    pub network_size: Option<u64>,
}
