use kith_core::{InviteError, NameError, RecordError};
use libp2p::PeerId;

/// Why a node operation failed. Variants map onto the CLI's exit codes: invalid input (2), not
/// found (3), conflict (4), anything else (1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kith_store::StoreError),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] kith_net::NetError),
    /// A network request failed.
    #[error(transparent)]
    Request(#[from] kith_net::RequestError),
    /// The name breaks a naming rule.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A petname is empty, too long or has control characters.
    #[error("petname '{0}' is not usable: use 1 to 64 printable characters")]
    InvalidPetname(String),
    /// The invite link is unusable.
    #[error(transparent)]
    InvalidInvite(#[from] InviteError),
    /// Our own record could not be built or read back.
    #[error("name record error: {0}")]
    Record(#[from] RecordError),
    /// Someone else holds the name.
    #[error("name '{name}' is held by another key ({holder}) since {since}; pick another name")]
    NameTaken {
        /// The name.
        name: String,
        /// Its current owner.
        holder: PeerId,
        /// When the owner claimed it (RFC 3339).
        since: String,
    },
    /// Nobody holds a claim for the name (after a real DHT lookup).
    #[error("no one has claimed '{0}'")]
    NameNotFound(String),
    /// The name now resolves to another key than the one pinned the first time, or the DHT's
    /// replica keys disagree on its owner and none has a majority (`contested`). Either way nothing
    /// is followed: an attacker whose nodes surround some of a name's keys gets at most this.
    #[error("{}", conflict_message(name, pinned, pinned_since, found, *contested))]
    NameConflict {
        /// The name.
        name: String,
        /// The key it was pinned to; for a contested name never pinned here, the strongest
        /// claimant (most replicas won, then most holders, then the earliest claim).
        pinned: PeerId,
        /// When that owner claimed it (RFC 3339).
        pinned_since: String,
        /// The other key: the one the DHT returns now, or the next strongest claimant.
        found: PeerId,
        /// True when no owner won a majority of the name's replica keys (nothing was pinned);
        /// false when a clear owner differs from the pinned key.
        contested: bool,
    },
    /// This node does not own the name.
    #[error("this node does not own the name '{0}'")]
    NotOurName(String),
    /// No contact, name or peer id matches.
    #[error("'{0}' is not a contact, a claimed name or a peer id")]
    UnknownRecipient(String),
    /// The petname is taken by another contact.
    #[error(
        "petname '{petname}' already names {peer}; remove it first (`kith contacts remove {petname}`)"
    )]
    PetnameTaken {
        /// The petname.
        petname: String,
        /// Who it names.
        peer: PeerId,
    },
    /// No contact has that petname.
    #[error("no contact is called '{0}'")]
    NoSuchContact(String),
    /// The proof of work supplied by the client does not verify.
    #[error("the supplied proof of work is invalid for '{0}'")]
    BadProofOfWork(String),
    /// The peer id has no embedded public key (not ed25519).
    #[error("cannot read a public key from peer id {0}")]
    NoPublicKey(PeerId),
    /// End-to-end encryption failed.
    #[error("encryption error: {0}")]
    Crypto(kith_crypto::CryptoError),
    /// No group matches the reference.
    #[error("no group is called '{0}'; see `kith group list`")]
    UnknownGroup(String),
    /// Several groups match the reference.
    #[error("'{reference}' names several groups ({}); use the group id", ids.join(", "))]
    AmbiguousGroup {
        /// What was asked for.
        reference: String,
        /// The matching group ids (hex).
        ids: Vec<String>,
    },
    /// Only admins may change the member list.
    #[error("only an admin of '{0}' can change who is in it")]
    NotGroupAdmin(String),
    /// We are not (or no longer) taking part in the group.
    #[error("{0}")]
    GroupClosed(String),
    /// The message cannot be sent as it is.
    #[error("{0}")]
    InvalidMessage(String),
    /// The recipient has published no usable key bundle (it never ran a node that publishes one,
    /// or the DHT cannot be reached): the message waits in the outbox.
    #[error("no encryption key bundle found for {0}")]
    NoKeyBundle(PeerId),
    /// A mailbox relay refused or failed a request.
    #[error("mailbox relay: {0}")]
    Mailbox(String),
    /// A file cannot be sent as it is (missing, a directory, over the size limit).
    #[error("{0}")]
    InvalidFile(String),
    /// No file has this id.
    #[error("no file has the id {0}; see `kith files`")]
    UnknownFile(String),
    /// The file was cancelled: its transfer stopped for good and its partial ciphertext is gone.
    #[error("file {0} was cancelled; ask the sender to send it again")]
    FileCancelled(String),
    /// The file has fully arrived, so there is no transfer left to cancel.
    #[error("file {0} has already arrived; there is no transfer to cancel")]
    FileComplete(String),
    /// The file has not fully arrived yet.
    #[error("file {id} is still arriving ({received} of {size} bytes); `kith save` waits for it")]
    FileIncomplete {
        /// The file id.
        id: String,
        /// Verified bytes so far.
        received: u64,
        /// Its size.
        size: u64,
    },
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] kith_blob::StoreError),
    /// We are in a call already.
    #[error("you are already in a call; hang up first")]
    CallBusy,
    /// No call has this id.
    #[error("no call has the id {0}; see `kith calls`")]
    UnknownCall(String),
    /// A background job (proof of work) failed to run.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// The text of [`ServiceError::NameConflict`]: both keys, and what to do.
fn conflict_message(
    name: &str,
    pinned: &PeerId,
    pinned_since: &str,
    found: &PeerId,
    contested: bool,
) -> String {
    if contested {
        format!(
            "name '{name}' is contested: the DHT holders of its replica keys disagree between {pinned} (claimed {pinned_since}) and {found}, and neither has a majority, so neither is followed; ask the person for an invite link or verify their fingerprint"
        )
    } else {
        format!(
            "name '{name}' is now held by another key ({found}) than the one you know ({pinned}, since {pinned_since}); use a petname or verify their fingerprint before trusting it (`kith resolve --fresh {name}` asks the network again)"
        )
    }
}

/// Formats unix ms as RFC 3339 (UTC, seconds) for messages.
pub(crate) fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_564_800_000), "2026-11-25T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
