/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The transport stack could not be built (TCP, QUIC, Noise, DNS).
    #[error("could not set up the network transports: {0}")]
    Transport(String),
    /// A behaviour rejected its configuration.
    #[error("invalid network configuration: {0}")]
    Behaviour(String),
    /// None of the listen addresses could be bound.
    #[error("could not listen on any address ({tried}); pass --listen with a free port")]
    NoListener {
        /// The addresses that were tried, with the errors.
        tried: String,
    },
    /// The network id makes an invalid protocol name.
    #[error("network id '{0}' is not usable in a protocol name; use letters, digits and '-'")]
    NetworkId(String),
}

/// Why a [`crate::Client`] request failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// The event loop has stopped (the node is shutting down).
    #[error("the network has shut down")]
    Shutdown,
    /// The DHT query found nobody to ask: the routing table is empty.
    #[error("no known peers to ask; is the node connected to any bootstrap node?")]
    NoKnownPeers,
    /// The DHT query ran out of time.
    #[error("the DHT query timed out")]
    Timeout,
    /// The record could not be stored locally (too large, store full).
    #[error("cannot store the record: {0}")]
    Store(String),
    /// No peer accepted the record.
    #[error("no DHT peer accepted the record: {0}")]
    PutFailed(String),
    /// A direct message did not get an answer.
    #[error("could not deliver to the peer: {0}")]
    Undelivered(String),
    /// The ack could not be sent (the peer hung up or the request timed out).
    #[error("the peer is no longer waiting for this answer")]
    AnswerDropped,
    /// Gossipsub refused a subscription or publication.
    #[error("group messaging failed: {0}")]
    Gossip(String),
    /// A dial was refused before it started.
    #[error("could not dial {addr}: {reason}")]
    Dial {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Inbound streams of this protocol (blobs, direct-message links) already have a taker;
    /// there is one per node.
    #[error("this protocol's streams are already being accepted by another part of the node")]
    AlreadyAccepting,
}
