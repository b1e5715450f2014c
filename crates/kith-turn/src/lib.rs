//! kith's embedded STUN/TURN server for community relays (DESIGN.md §13), so calls connect
//! through NAT. Media stays DTLS-SRTP end to end: the relay forwards datagrams it cannot read.
//!
//! Design:
//! 1. **Short-lived credentials, nothing stored per user.** The TURN REST API scheme
//!    (draft-uberti-behave-turn-rest-00): the relay's node mints
//!    `username = "<expiry>:<user>"`, `password = base64(HMAC-SHA1(secret, username))` for its
//!    registered users ([`Credentials::mint`]); the server recomputes the password from the
//!    username and accepts it only while the expiry is in the future and at most
//!    [`MAX_CREDENTIAL_TTL`] ahead. The same credentials work with coturn's `use-auth-secret`.
//! 2. **The protocol is `turn` (webrtc-rs), not hand-written.** `turn` 0.17 is a library: a
//!    `Server` we start and close, an `AuthHandler` hook for our credential check and a
//!    `RelayAddressGenerator` hook through which we bind one real UDP socket per allocation
//!    (so any peer, TURN user or not, can reach a relayed address) and cap their number
//!    (`max_allocations`). It adds 9 packages to the tree (`stun`, `webrtc-util`, `md-5`, ...);
//!    ring, tokio and rand were already there.
//!    `turn-server` (turn-rs 4.1) was the other candidate and was not taken: it is an
//!    application (its `start_server` runs until error, with no handle to stop it or read its
//!    port), it allocates only virtual ports, relaying between its own clients and not to an
//!    arbitrary peer, and it pulls in aws-lc-rs (C build with prebuilt NASM), tonic, fern,
//!    clap and mimalloc without a way to turn them off.
//! 3. **No relaying into the relay's own network.** `turn` relays to any peer address; our relayed
//!    sockets drop datagrams to and from loopback, private, link-local and similar peers unless
//!    [`TurnConfig::allow_private_peers`] is set, so a user cannot reach services on the relay's
//!    host or LAN (coturn's `denied-peer-ip` advice).
//! 4. **Counters, not a metrics library**: [`TurnMetrics`].
//!
//! Usage (on a relay, inside the tokio runtime):
//! - [`TurnServer::start`] with a [`TurnConfig`] (UDP listen address, public relay IP, secret);
//! - per registered user: [`Credentials::mint`] with the same secret, sent with
//!   [`ice_server_urls`]`(server.public_addr())`;
//! - [`TurnServer::shutdown`] on the way out.
//!
//! Known limits of `turn` 0.17: UDP only (no TCP/TLS TURN); one task reads the listening socket;
//! allocation lifetimes are the client's choice up to 1 h; and it keeps every nonce it hands out
//! in a map it never prunes (one small entry per unauthenticated request), so a flood of
//! requests grows the relay's memory until it restarts.

mod config;
mod credentials;
mod error;
mod metrics;
mod server;
mod urls;

pub use config::{MIN_SECRET_LEN, TurnConfig};
pub use credentials::{CredentialError, Credentials, MAX_CREDENTIAL_TTL, check_username};
pub use error::TurnError;
pub use metrics::TurnMetrics;
pub use server::TurnServer;
pub use urls::ice_server_urls;
