//! kith-store: the node's embedded database.
//!
//! One sled database per home directory, opened once per process. Each kind of record has its own
//! typed tree; values are prost-encoded (`kith-proto`) and keys use big-endian integers so range
//! scans come out in order.
//!
//! - [`Store`]: opens the database, enforces the schema version and the single-process lock, flushes.
//! - [`NameBook`]: names this node owns, names pinned to the owner first resolved, contacts.
//! - [`CallBook`]: the call history (signalling itself is never stored).
//! - [`FileBook`]: files sent and received (their ciphertext lives in kith-blob's store).
//! - [`PeerBook`]: the address book of peers this node has met, used to rejoin the network after a restart.
//!
//! Only this crate imports sled (an invariant in `ARCHITECTURE.md`).

mod calls;
mod error;
mod files;
mod gate;
mod groups;
mod journal;
mod mailbox;
mod messages;
mod names;
mod peers;
mod relay_blobs;
mod store;

pub use calls::{CallBook, CallId, CallOutcome, CallRecord};
pub use error::StoreError;
pub use files::{FileBook, FileOffer, FileRecord, FileState};
pub use groups::{
    GroupId, GroupMessage, GroupRecord, GroupStore, PendingEnvelope, ReceiverState, SenderState,
    SessionId,
};
pub use mailbox::{Deposit, Mail, MailId, MailboxStats, MailboxStore, Quota};
pub use messages::{
    Correspondent, DueEntries, Incoming, Message, MessageId, MessageStore, OlmSave, OutboxItem,
    ReceiptKind, Received, ReceivedOutcome, Status, Trust, preview,
};
pub use names::{Contact, NameBook, Pin};
pub use peers::{KnownPeer, PeerBook};
pub use relay_blobs::{HeldBlob, RelayBlobBook, RelayBlobStats, Reserve};
pub use store::{FlushTicket, SCHEMA_VERSION, Store, StoreConfig};
