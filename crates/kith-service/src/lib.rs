//! kith-service: the node itself.
//!
//! [`Node`] wires the store ([`kith_store::Store`]) to the network ([`kith_net`]) and owns the
//! policies that are neither storage nor networking: which peers to remember, whom to dial after a
//! restart, what a status report contains, how shutdown is ordered.
//!
//! ```text
//!   kith-api ──▶ Node ──▶ kith_net::Client ──▶ EventLoop (own task)
//!                 │                                 │ Event (try_send)
//!                 ├──▶ Store (sled)  ◀── service task ◀┘
//! ```
//!
//! - [`Node::start`]: spawns the network loop and the service task.
//! - [`Node::status`], [`Node::peers`], [`Node::metrics_text`], [`Node::checkup`]: what the API serves.
//! - names: [`Node::register_name`], [`Node::resolve_name`], contacts, invites, safety numbers.
//! - [`Node::request_shutdown`] / [`Node::shutdown`]: orderly stop (network closed, store flushed).

// Errors carry both peer ids of a name conflict so the user sees them; they are rare, never on a
// hot path, so their size does not matter.
#![allow(clippy::result_large_err)]

mod calls;
mod dm;
mod error;
mod files;
mod groups;
mod handles;
mod health;
mod mailbox;
mod names;
mod node;
mod olm_state;
mod relay_blobs;
mod router;
#[cfg(feature = "testing")]
mod testing;

pub use calls::{
    BrowserSignal, CallEvent, CallInfo, CallState, CallTarget,
    DEFAULT_RING_TIMEOUT as DEFAULT_CALL_RING_TIMEOUT, IceConfig, IceServer, MAX_CALL_MEMBERS,
    MAX_SIGNAL_BYTES, ParticipantState, RemoteSignal, TurnIssuer, summary_text,
};
pub use dm::{Conversation, MAX_TEXT_BYTES, MessageEvent, Sent};
pub use error::ServiceError;
pub use files::{
    DEFAULT_MAX_FILE_BYTES, FileReport, FilesConfig, SendFileOptions, SentFile, filter_presets,
};
pub use groups::{
    GroupInfo, GroupKeyState, GroupSent, MAX_ENVELOPE as MAX_GROUP_ENVELOPE, MAX_MEMBERS,
    MAX_TITLE_CHARS, ROTATE_EVERY, topic as group_topic,
};
pub use health::{Checkup, MailboxHealth, NameClaims, Publication, RivalClaim};
pub use kith_crypto::PickleKey;
pub use kith_photo::Preset as FilterPreset;
pub use kith_store::{CallId, CallOutcome, CallRecord, FileOffer, FileState};
pub use kith_store::{GroupId, GroupMessage, SessionId};
pub use kith_store::{MailboxStats, Quota, RelayBlobStats};
pub use kith_store::{Message, MessageId, Status as MessageStatus, Trust};
pub use mailbox::{MailboxConfig, pointer_key as mailbox_pointer_key};
pub use names::{NameEvent, Registration, Resolution, ResolvedFrom, SuppliedPow, Verification};
pub use node::{MailboxUsage, Node, Options, Status};
pub use relay_blobs::RelayBlobConfig;
#[cfg(feature = "testing")]
pub use testing::Probe;

/// This build's version, as `kith status` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
