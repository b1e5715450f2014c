//! Files for offline recipients: community relays keep encrypted blobs for their registered
//! users, beside the mailboxes and sized separately.
//!
//! ```text
//! sender: direct delivery of a file offer fails
//!   └─▶ push the ciphertext to the recipient's relay (/kith/blob hold request, tag = recipient)
//!         relay: registered? quota (bytes per user, one sled transaction)? → wants ranges
//!         sender sends them, relay verifies each against the hash, then says "complete"
//!   └─▶ only then deposit the offer envelope at that relay's mailbox
//! recipient connects → mailbox sync → the offer arrives → download: sender first, then group
//!   members, then its own relays → complete → "release" to its relays, which drop their copy
//! relay: held copies expire after the TTL (swept with the mail)
//! ```
//!
//! The relay learns the size, the hash, who sent to whom and when; never the key, which is only
//! in the Olm-encrypted offer. A full quota is refused with a sentence the sender's node records
//! on the message, which stays queued and is tried again.

use std::{path::PathBuf, sync::Arc, time::Duration};

use kith_blob::{BlobHash, BlobStore, HoldOffer, HoldPolicy, HoldRefusal, PushError, Status};
use kith_store::Reserve;
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

use crate::{
    MessageEvent, Node,
    handles::{Events, Outbound},
    mailbox::MailFiles,
    node::now_ms,
};

/// What a relay offers as blob host for its users' incoming files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayBlobConfig {
    /// Most ciphertext bytes held per recipient. Default 512 MiB.
    pub quota_bytes: u64,
    /// How long a blob is held when its recipient never fetches it. Default 14 days.
    pub ttl: Duration,
    /// Directory of the held blobs; `None`: beside the node's own blob store (`<blobs>.held`).
    pub dir: Option<PathBuf>,
}

impl Default for RelayBlobConfig {
    fn default() -> Self {
        Self {
            quota_bytes: 512 * 1024 * 1024,
            ttl: Duration::from_secs(14 * 86_400),
            dir: None,
        }
    }
}

/// Time allowed to open a stream to a relay for a push.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Slowest upload a push waits for (bytes a second), beyond a fixed minute.
const SLOWEST_PUSH: u64 = 64 * 1024;

fn relay_peer(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) => Some(id),
        _ => None,
    }
}

/// The relay's answer to one hold request, for one stream from `from`.
struct RelayHold {
    books: kith_store::Store,
    max_file_bytes: u64,
    from: PeerId,
    store: BlobStore,
    config: RelayBlobConfig,
}

impl HoldPolicy for RelayHold {
    fn admit(&self, offer: &HoldOffer) -> Result<BlobStore, HoldRefusal> {
        let refuse = |status, reason: String| HoldRefusal { status, reason };
        let Ok(recipient) = PeerId::from_bytes(&offer.tag) else {
            return Err(refuse(
                Status::NotAccepted,
                "a held blob must name its recipient's peer id".into(),
            ));
        };
        let boxes = self.books.mailboxes();
        if !boxes.is_registered(&offer.tag).unwrap_or(false) {
            return Err(refuse(
                Status::NotAccepted,
                format!("{recipient} has no mailbox at this relay"),
            ));
        }
        let limit = kith_blob::ciphertext_len(self.max_file_bytes);
        if offer.size > limit.min(self.config.quota_bytes) {
            return Err(refuse(
                Status::Full,
                format!(
                    "the file is {} bytes; this relay holds at most {} bytes for one user",
                    offer.size,
                    limit.min(self.config.quota_bytes)
                ),
            ));
        }
        let reserved = self.books.relay_blobs().reserve(
            &offer.tag,
            *offer.hash.as_bytes(),
            &self.from.to_bytes(),
            offer.size,
            now_ms(),
            self.config.quota_bytes,
        );
        match reserved {
            Ok(Reserve::Reserved | Reserve::AlreadyHeld) => Ok(self.store.clone()),
            Ok(Reserve::Full { held }) => Err(refuse(
                Status::Full,
                format!(
                    "{recipient}'s file quota at this relay is full ({held} of {} bytes held); \
                     it frees up when they come online",
                    self.config.quota_bytes
                ),
            )),
            Err(e) => Err(refuse(Status::Busy, format!("relay store error: {e}"))),
        }
    }
}

/// The relay's store of files held for its users (part of the mailbox relay, which answers
/// releases and sweeps with its mail): owns the held-blobs book and the blob store beside the
/// node's own (opened on first use), answers blob streams (ranges of our own or held blobs, and
/// hold requests checked against the mailbox registrations and the quota).
pub(crate) struct HeldBlobs {
    /// The node's store: the held-blobs book is written here; the mailboxes book is read for
    /// registrations.
    store: kith_store::Store,
    /// The node's own blob store (served too; the held store sits beside it).
    own: BlobStore,
    config: RelayBlobConfig,
    max_file_bytes: u64,
    /// False on a node that is not a relay: nothing is held, only our own blobs are served.
    is_relay: bool,
    /// The held store, opened on first use.
    slot: std::sync::Mutex<Option<BlobStore>>,
}

impl std::fmt::Debug for HeldBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldBlobs")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HeldBlobs {
    /// The held store of a relay (`is_relay`) beside `own`, the node's blob store.
    pub(crate) fn new(
        store: kith_store::Store,
        own: BlobStore,
        config: RelayBlobConfig,
        max_file_bytes: u64,
        is_relay: bool,
    ) -> Self {
        Self {
            store,
            own,
            config,
            max_file_bytes,
            is_relay,
            slot: std::sync::Mutex::new(None),
        }
    }

    /// The files held for offline users (entries and bytes).
    pub(crate) fn stats(&self) -> Result<kith_store::RelayBlobStats, crate::ServiceError> {
        Ok(self.store.relay_blobs().stats()?)
    }

    /// The relay's store of blobs held for its users (opened on first use); `None` on a node
    /// that is not a relay.
    fn held_blobs(&self) -> Option<BlobStore> {
        if !self.is_relay {
            return None;
        }
        let mut slot = crate::node::lock(&self.slot);
        if let Some(store) = slot.as_ref() {
            return Some(store.clone());
        }
        let dir = self.config.dir.clone().unwrap_or_else(|| {
            let mut dir = self.own.dir().as_os_str().to_owned();
            dir.push(".held");
            PathBuf::from(dir)
        });
        match BlobStore::open_with_metrics(dir, self.own.metrics().clone()) {
            Ok(store) => {
                *slot = Some(store.clone());
                Some(store)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the store of blobs held for users");
                None
            }
        }
    }

    /// Relay side: answers one blob stream from `peer`: ranges from our own or the held blobs,
    /// and hold requests for our users.
    pub(crate) async fn serve_blob_stream<S>(
        &self,
        peer: PeerId,
        stream: S,
        limits: &kith_blob::ServeLimits,
    ) -> Result<kith_blob::ServeSummary, kith_blob::ServeError>
    where
        S: futures::AsyncRead + futures::AsyncWrite + Unpin,
    {
        let own = self.own.clone();
        let Some(held) = self.held_blobs() else {
            return kith_blob::serve(stream, &own, limits).await;
        };
        let policy = RelayHold {
            books: self.store.clone(),
            max_file_bytes: self.max_file_bytes,
            from: peer,
            store: held.clone(),
            config: self.config.clone(),
        };
        let summary = kith_blob::serve_with(stream, &[own, held], Some(&policy), limits).await?;
        if summary.held > 0 {
            // The reservation is in sled; the blob itself was fsync'd by the store.
            let _ = self.store.flush().await;
        }
        Ok(summary)
    }

    /// Relay side: the recipient `peer` has these blobs now; drop our copies for it.
    pub(crate) fn release_held_blobs(&self, peer: PeerId, hashes: &[Vec<u8>]) -> usize {
        let mut released = 0;
        for hash in hashes {
            let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
                continue;
            };
            released += usize::from(self.drop_held(&peer.to_bytes(), &hash));
        }
        released
    }

    /// Releases one (recipient, blob) entry and deletes the ciphertext once nobody holds it.
    fn drop_held(&self, recipient: &[u8], hash: &[u8; 32]) -> bool {
        match self.store.relay_blobs().release(recipient, hash) {
            Ok(Some(orphan)) => {
                if orphan
                    && let Some(store) = self.held_blobs()
                    && let Err(e) = store.remove(BlobHash::from_bytes(*hash))
                {
                    tracing::warn!(error = %e, "cannot delete a released blob");
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot release a held blob");
                false
            }
        }
    }

    /// Relay side: drops held blobs older than the TTL, and ciphertext nobody holds any more (a
    /// crash between the two steps of a release). Returns how many entries expired.
    pub(crate) fn sweep_held_blobs(&self) -> usize {
        let Some(store) = self.held_blobs() else {
            return 0;
        };
        let ttl = u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX);
        let expired = match self.store.relay_blobs().expired(now_ms(), ttl) {
            Ok(expired) => expired,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sweep held blobs");
                return 0;
            }
        };
        let mut n = 0;
        for held in expired {
            n += usize::from(self.drop_held(&held.recipient, &held.hash));
        }
        for status in store.list() {
            if !self
                .store
                .relay_blobs()
                .is_held(status.hash.as_bytes())
                .unwrap_or(true)
            {
                let _ = store.remove(status.hash);
            }
        }
        n
    }
}

impl Node {
    /// Relay side: the files held for offline users (entries and bytes), for `kith relay status`
    /// and tests.
    pub fn held_files_stats(&self) -> Result<kith_store::RelayBlobStats, crate::ServiceError> {
        self.inner.mailbox_relay.held().stats()
    }
}

/// The sender side of held files, a part of the mailbox user side (its deposits): before a file
/// offer is deposited at a recipient's relay, the file goes there. Reads the outgoing file's
/// record and notes on it how the push went through the files component ([`MailFiles`]), notes
/// a full quota on the message through [`Outbound::note_failure`], and reports progress as
/// [`Events`].
pub(crate) struct FilePush {
    files: Arc<dyn MailFiles>,
    blobs: BlobStore,
    client: kith_net::Client,
    events: Arc<dyn Events>,
    outbound: Arc<dyn Outbound>,
}

impl std::fmt::Debug for FilePush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePush").finish_non_exhaustive()
    }
}

impl FilePush {
    /// The push over the files component `files`, the node's blob store `blobs` and the network.
    pub(crate) fn new(
        files: Arc<dyn MailFiles>,
        blobs: BlobStore,
        client: kith_net::Client,
        events: Arc<dyn Events>,
        outbound: Arc<dyn Outbound>,
    ) -> Self {
        Self {
            files,
            blobs,
            client,
            events,
            outbound,
        }
    }

    /// Sender side: before the offer for outbox item `id` is deposited at `relay` for `peer`,
    /// put the file there. `true`: not a file, or the relay holds all of it now; `false`: keep
    /// the message queued (the reason of a full quota is noted on it and on the file).
    pub(crate) async fn hold_file_at(
        &self,
        peer: PeerId,
        id: &[u8; 16],
        relay: &Multiaddr,
    ) -> bool {
        let Some(record) = self.files.file_of(id) else {
            return true;
        };
        if !record.outgoing {
            return true;
        }
        if record.state == kith_store::FileState::Cancelled {
            // Cancelled by the sender: its offer was withdrawn from the outbox, and nothing is
            // left to push; never deposit it.
            return false;
        }
        let Some(relay_peer) = relay_peer(relay) else {
            return false;
        };
        let hash = BlobHash::from_bytes(record.offer.hash);
        let stream = match tokio::time::timeout(
            OPEN_TIMEOUT,
            self.client.open_blob_stream(relay_peer),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(relay = %relay_peer, error = %e, "cannot open a blob stream to the relay");
                return false;
            }
            Err(_) => return false,
        };
        let blobs = self.blobs.clone();
        let size = record.offer.size;
        let events = self.events.clone();
        let message = record.message_id;
        let mut reported = 0u64;
        let tag = peer.to_bytes();
        let push = kith_blob::push(stream, &blobs, hash, &tag, move |p| {
            if p.written >= reported + crate::files::PROGRESS_EVERY || p.written == p.wanted {
                reported = p.written;
                events.emit(MessageEvent::FileProgress {
                    id: message,
                    peer,
                    received: size.saturating_sub(p.wanted) + p.written,
                    size,
                });
            }
        });
        let limit = Duration::from_secs(60 + size / SLOWEST_PUSH);
        let Ok(outcome) = tokio::time::timeout(limit, push).await else {
            tracing::info!(%peer, relay = %relay_peer, "uploading a file to the relay timed out; will resume");
            return false;
        };
        match outcome {
            Ok(done) if done.complete => {
                tracing::info!(%peer, relay = %relay_peer, sent = done.bytes_sent, "recipient offline; file held at its relay");
                self.files.note_push(
                    id,
                    record.state,
                    &format!("held at relay {relay_peer} until {peer} comes online"),
                );
                true
            }
            Ok(_) => false,
            Err(PushError::Refused { status, reason }) => {
                tracing::info!(%peer, relay = %relay_peer, ?status, %reason, "relay refused to hold the file");
                if status == Status::Full {
                    let note = format!("waiting: {reason}");
                    let _ = self.outbound.note_failure(peer, id, &note);
                    self.files.note_push(id, record.state, &note);
                }
                false
            }
            Err(e) => {
                tracing::info!(%peer, relay = %relay_peer, error = %e, "uploading a file to the relay failed; will resume");
                false
            }
        }
    }
}
