//! kith-crypto: end-to-end encryption of direct messages with vodozemac Olm (the Matrix double
//! ratchet, audited).
//!
//! Pure logic: bytes in, bytes out. No I/O, no async, no store; the node decides when to save the
//! state (after every call that takes `&mut`) and where to publish the key bundle.
//!
//! - [`OlmAccount`]: one per node. The Olm identity and fallback keys; starts sessions, rotates
//!   the fallback key, saves and restores itself encrypted with a [`PickleKey`].
//! - [`PeerSessions`]: the sessions with one peer; encrypts and decrypts on them and saves them on
//!   their own, so the node locks and saves one conversation's state at a time.
//! - [`Olm`]: the account and every peer's sessions in one value (tools, tests, and the
//!   whole-state pickle of older stores, which [`OlmAccount::from_pickle`] also reads).
//! - [`KeyBundle`] / [`SignedKeyBundle`]: the identity and fallback keys a node publishes in the
//!   DHT, signed with its libp2p key, so a first message can reach it while it is offline.
//!   [`KeyBundle::verify`] checks a fetched bundle against the peer id it was fetched for.
//! - [`Ciphertext`]: one encrypted message (pre-key or normal) with its wire encoding.
//! - [`SafetyNumber`]: 60 digits both people compare to rule out a man in the middle.
//! - [`CryptoError`]: every failure, typed; untrusted input never panics.
//!
//! Generated protobuf types (`kith.v1.KeyBundle`, `OlmMessage`, `OlmPickle`, …) stay inside this
//! crate; the public API uses the domain types above, and no vodozemac type appears in it either.

mod bundle;
mod error;
mod group;
mod keys;
mod message;
mod olm;
mod pickle;
mod safety;

pub use bundle::{KeyBundle, SignedKeyBundle};
pub use error::{BundleError, CryptoError, DecryptFailure, PickleError};
pub use group::{GroupReceiver, GroupSender, GroupSessionId, GroupSessionKey};
pub use keys::{Curve25519Key, Ed25519Key, PickleKey};
pub use message::{Ciphertext, MessageType};
pub use olm::{Olm, OlmAccount, PeerSessions};
pub use safety::{Party, SafetyNumber};

#[cfg(test)]
mod tests;
