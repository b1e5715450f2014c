//! Why a TURN server could not start.

use std::net::SocketAddr;

/// Why [`crate::TurnServer::start`] failed; each message says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// Something else (another TURN server, coturn, a second kith) already uses the UDP port.
    #[error(
        "UDP {addr} is already in use (another TURN server, coturn or kith?); \
         stop it or choose another TURN address"
    )]
    AddrInUse {
        /// The address that was asked for.
        addr: SocketAddr,
    },
    /// The UDP socket could not be bound for another reason (no such local address, a
    /// privileged port without the capability, ...).
    #[error("cannot bind the TURN UDP socket on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The shared secret is too short to keep others from minting credentials.
    #[error("the TURN secret has {len} bytes, at least {min} are needed (32 random bytes is best)")]
    SecretTooShort {
        /// The secret's length.
        len: usize,
        /// [`crate::MIN_SECRET_LEN`].
        min: usize,
    },
    /// The realm is empty; clients need one to build their key.
    #[error("the TURN realm is empty; leave the default \"kith\" or set a name")]
    EmptyRealm,
    /// The relay port range is empty or includes port 0.
    #[error("the TURN relay port range {start}-{end} is empty or includes port 0")]
    BadPortRange {
        /// First port of the range.
        start: u16,
        /// Last port of the range (inclusive).
        end: u16,
    },
    /// The `turn` crate refused the configuration (should not happen once the checks above pass).
    #[error("the TURN server could not start: {0}")]
    Server(#[source] turn::Error),
}
