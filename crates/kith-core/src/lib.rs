//! kith-core: the rules every kith node applies the same way, with no I/O.
//!
//! - [`Name`]: what a valid name is (NFKC + case fold, one script, not confusable with ASCII,
//!   3–32 characters of letters, digits, `-` and `_`) and where it lives in the DHT.
//! - [`pow`]: the proof of work that makes claiming names in bulk expensive.
//! - [`NameRecord`]: a signed name claim; [`NameRecord::verify`] is what holders and resolvers run.
//! - [`select`]: choosing the owner among conflicting answers from DHT holders, per replica key
//!   and across the [`NAME_REPLICAS`] replica keys of a name.
//! - [`density`]: which holders of a key count, against ids generated to sit next to it.
//! - [`safety_number`]: the fingerprint two people read to each other.
//! - [`Invite`]: the `kith://` link that adds a friend without any lookup.
//! - [`ClockSkew`]: how far our clock is from our peers', from the readings in their answers.
//!
//! Everything here is deterministic given its inputs (time is always passed in), so it is tested
//! without sockets.

pub mod clock;
pub mod density;
mod invite;
mod name;
pub mod pow;
mod record;
mod safety;
pub mod select;

pub use clock::{ClockSkew, SkewEstimate, SkewSample};
pub use invite::{Invite, InviteError};
pub use name::{
    MAX_LEN as NAME_MAX_LEN, MIN_LEN as NAME_MIN_LEN, Name, NameError, REPLICAS as NAME_REPLICAS,
};
pub use record::{ClaimParams, NameRecord, NameRules, RecordError};
pub use safety::safety_number;
