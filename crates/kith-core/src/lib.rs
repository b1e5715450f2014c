//! kith-core: the rules every kith node applies the same way, with no I/O.
//!
//! - [`Name`]: what a valid name is (NFKC + case fold, one script, not confusable with ASCII,
//!   3–32 characters of letters, digits, `-` and `_`) and where it lives in the DHT.
//! - [`pow`]: the proof of work that makes claiming names in bulk expensive.
//! - [`NameRecord`]: a signed name claim; [`NameRecord::verify`] is what holders and resolvers run.
//! - [`select`]: choosing the owner among conflicting answers from DHT holders, per replica key
//!   and across the [`NAME_REPLICAS`] replica keys of a name.
//! - [`density`]: which holders of a key count, against ids generated to sit next to it.
//! - [`dht`]: what a DHT holder or resolver accepts (name records, key bundles, mailbox
//!   pointers) and which value replaces which.
//! - [`id_work`]: which peer ids may be DHT servers when a network makes ids costly.
//! - [`safety_number`]: the fingerprint two people read to each other.
//! - [`Invite`]: the `kith://` link that adds a friend without any lookup.
//! - [`ClockSkew`]: how far our clock is from our peers', from the readings in their answers.
//! - [`group`]: signed member lists and which replaces which, and the key-free envelope checks.
//! - [`Backoff`], [`RateLimiter`], [`MessageIds`]: retry schedules, per-peer limits, message ids.
//! - [`check_text`]: what a text message may be.
//!
//! Everything here is deterministic given its inputs (time is always passed in), so it is tested
//! without sockets.

pub mod backoff;
pub mod clock;
pub mod density;
pub mod dht;
pub mod group;
pub mod id_work;
mod invite;
pub mod message_id;
mod name;
pub mod pow;
pub mod rate;
mod record;
mod safety;
pub mod select;
pub mod text;

pub use backoff::Backoff;
pub use clock::{ClockSkew, SkewEstimate, SkewSample};
pub use group::{GroupEnvelope, GroupError, MemberList};
pub use invite::{Invite, InviteError};
pub use message_id::{MessageId, MessageIds};
pub use name::{
    MAX_LEN as NAME_MAX_LEN, MIN_LEN as NAME_MIN_LEN, Name, NameError, REPLICAS as NAME_REPLICAS,
};
pub use rate::{Rate, RateLimiter};
pub use record::{ClaimParams, NameRecord, NameRules, RecordError};
pub use safety::safety_number;
pub use text::{MAX_TEXT_BYTES, TextError, check_text};
