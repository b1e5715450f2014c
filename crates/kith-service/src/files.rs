//! Files and photos: sealed into the blob store, offered in a direct message, fetched by the
//! recipient over `/kith/blob/1.0.0`.
//!
//! The component owns the blob store and the set of running downloads. The chat side meets it
//! through two calls: [`Node::send_file`] (seal, then send an offer through the ordinary outbox)
//! and the receive pipeline's `record_incoming_file` / `start_download` (record the offer with the
//! message, fetch once the message is stored). Downloads resume on start, when the sender
//! connects again, and when a request is accepted.
//!
//! Serving: any peer may ask for ranges of any blob held here. A blob is ciphertext addressed by
//! the hash of that ciphertext, so serving it reveals nothing to someone who does not already
//! have the hash and key from the message, and lets group members and relays serve one another.
//!
//! Ownership: [`Files`] owns the files book, the blob store and the running downloads; it meets
//! the rest of the node only through the handles it is built with ([`FilesParts`]: delivery,
//! events, trust, [`GroupFiles`] for group files, [`FileRelays`] for our mailbox relays). The
//! relay side of held files and blob serving are the mailbox relay's `HeldBlobs`
//! (`relay_blobs.rs`); the node hands every inbound blob stream to it, through [`Throttled`]
//! when a serving rate is set.

use std::{
    collections::{HashMap, HashSet},
    io::Cursor,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex as StdMutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use kith_blob::{BlobHash, BlobKey, BlobStore, FetchError};
use kith_proto::v1 as pb;
use kith_store::{FileOffer, FileRecord, FileState, MessageId};
use libp2p::PeerId;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use futures::future::BoxFuture;

use crate::{
    MessageEvent, Node, Sent, ServiceError,
    handles::{Events, Outbound, Shown, TrustCheck},
    node::now_ms,
};

/// Default largest file a node sends or accepts: 2 GiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Photos larger than this are sent as plain files, not decoded (memory).
const MAX_PHOTO_BYTES: u64 = 64 * 1024 * 1024;
/// Thumbnails larger than this are left out of the offer (it must fit one direct message).
const MAX_THUMBNAIL_BYTES: usize = 96 * 1024;
/// Attempts of one download run before it waits for the sender to connect again.
const DOWNLOAD_ATTEMPTS: u32 = 6;
/// Bytes between two progress events of one download.
pub(crate) const PROGRESS_EVERY: u64 = 1024 * 1024;
/// First wait before a download paused by a full disk tries again (doubling to 5 minutes).
const DISK_FULL_RETRY: Duration = Duration::from_secs(5);
/// Time to open a blob stream to the sender.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where files are kept and how large they may be.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// Directory of the blob store; `None`: `<store dir>.blobs` beside the store's directory.
    pub dir: Option<PathBuf>,
    /// Largest file sent or accepted, in bytes.
    pub max_file_bytes: u64,
    /// Relay role (with a mailbox server): how much this relay keeps for its offline users.
    pub relay: crate::RelayBlobConfig,
    /// Most blob bytes a second this node serves on one stream (`None`: as fast as the link
    /// goes), for metered or shared uplinks.
    pub serve_rate: Option<u64>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            relay: crate::RelayBlobConfig::default(),
            serve_rate: None,
        }
    }
}

/// How a file is sent.
#[derive(Debug, Clone, Default)]
pub struct SendFileOptions {
    /// Text shown with it.
    pub caption: String,
    /// A photo filter preset (`kith filters`).
    pub filter: Option<String>,
    /// Send a photo's own bytes (metadata stripped except orientation) instead of re-encoding.
    pub original: bool,
}

/// A sent file, as `kith send-file` reports it.
#[derive(Debug, Clone)]
pub struct SentFile {
    /// The message that carries it.
    pub sent: Sent,
    /// The file.
    pub file: FileReport,
    /// Something the sender should know (an image that did not decode was sent as a file).
    pub note: Option<String>,
}

/// One file, as `kith files` lists it.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// The file's id: the id of the message that carried it.
    pub id: MessageId,
    /// The other side.
    pub peer: PeerId,
    /// Sent by us.
    pub outgoing: bool,
    /// The offer (name, mime, size, dimensions, thumbnail; the key stays inside the node).
    pub offer: FileOffer,
    /// Where the transfer stands.
    pub state: FileState,
    /// Ciphertext bytes verified and on disk.
    pub received_bytes: u64,
    /// Why it is paused or failed (or, for a sent file, where it waits).
    pub note: String,
    /// The group it was sent in; `None` for a direct message.
    pub group: Option<kith_store::GroupId>,
    /// For a file we sent: ciphertext bytes (and hashes) served to its recipients or pushed to
    /// relays since this node started, for a progress bar.
    pub sent_bytes: u64,
}

/// How long `cancel_file` waits for a running download's task to end (it only has to notice the
/// abort and let go of the blob: a record write at most).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Blobs younger than this are never collected: one being sealed for a send has no file record
/// until its offer is queued.
const GC_MIN_AGE: Duration = Duration::from_secs(3600);

/// The files component (issue 12, step 5): owns the files book, the blob store and the downloads
/// running now. What it needs of others comes in through the handles it is built with
/// ([`FilesParts`]); `Node`'s file operations delegate to it. Held in an `Arc` by the node, so
/// the tasks it spawns (downloads, the collection of unused ciphertext) hold the component, or a
/// `Weak` of it, not the node.
pub(crate) struct Files {
    pub(crate) blobs: BlobStore,
    store: kith_store::Store,
    client: kith_net::Client,
    me: PeerId,
    outbound: Arc<dyn Outbound>,
    events: Arc<dyn Events>,
    groups: Arc<dyn GroupFiles>,
    trust: Arc<dyn TrustCheck>,
    relays: Arc<dyn FileRelays>,
    max_file_bytes: u64,
    /// Running downloads by file id: the run's number and how to stop it (a cancel).
    running: StdMutex<HashMap<MessageId, (u64, tokio::task::AbortHandle)>>,
    next_run: AtomicU64,
    serve_rate: Option<u64>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
}

/// What a group file needs of the groups component: which group a reference names, who its
/// members are (they may hold the file), and the Megolm message that carries the offer. The
/// groups component implements it (router.rs), so files do not read the groups book.
pub(crate) trait GroupFiles: Send + Sync {
    /// The id of the group `reference` (id, id prefix or title) names.
    fn group_id(&self, reference: &str) -> Result<kith_store::GroupId, ServiceError>;

    /// The group's current members; empty when unknown.
    fn members(&self, group: &kith_store::GroupId) -> Vec<PeerId>;

    /// Sends `offer` to the group `reference` names (shown as `text`); `before_store` writes
    /// the file record once the message id is known and before the message is stored.
    fn send_offer<'a>(
        &'a self,
        reference: &'a str,
        offer: Shown<'a, pb::FileOffer>,
    ) -> BoxFuture<'a, Result<crate::GroupSent, ServiceError>>;
}

/// Our mailbox relays as holders of files: a download asks them last (they keep files sent while
/// we were offline), and a complete file lets them go. relay_blobs.rs implements it (it runs the
/// hold and release exchange over the mailbox protocol).
pub(crate) trait FileRelays: Send + Sync {
    /// Our relays, as peers that may hold a file for us.
    fn holders(&self) -> Vec<PeerId>;

    /// Tells our relays they may delete their copy of the blob `hash`.
    fn release(&self, hash: [u8; 32]);
}

/// What [`Files::new`] needs besides the blob store and the configuration.
pub(crate) struct FilesParts {
    /// The node's store: the component writes its files book (and flushes).
    pub(crate) store: kith_store::Store,
    /// The network, for blob streams.
    pub(crate) client: kith_net::Client,
    /// Offers go out as direct messages (and a cancelled one is withdrawn).
    pub(crate) outbound: Arc<dyn Outbound>,
    /// Progress events.
    pub(crate) events: Arc<dyn Events>,
    /// Group files: members and the Megolm message.
    pub(crate) groups: Arc<dyn GroupFiles>,
    /// Whether a sender is accepted (files from requests wait).
    pub(crate) trust: Arc<dyn TrustCheck>,
    /// Our mailbox relays as holders.
    pub(crate) relays: Arc<dyn FileRelays>,
}

impl Files {
    /// Opens the blob store `config` names (beside the store at `store_path` by default) and
    /// registers its metrics: the part of building the component that can fail, done before the
    /// node exists.
    pub(crate) fn open_blobs(
        config: &crate::FilesConfig,
        store_path: &Path,
        registry: &mut Registry,
    ) -> Result<BlobStore, ServiceError> {
        let dir = match &config.dir {
            Some(dir) => dir.clone(),
            // A sibling of the store named after it, so nodes sharing a parent never share blobs.
            None => {
                let mut name = store_path.file_name().unwrap_or_default().to_os_string();
                name.push(".blobs");
                store_path.with_file_name(name)
            }
        };
        let blobs = BlobStore::open(dir)?;
        registry.register_collector(Box::new(BlobCollector(blobs.metrics().clone())));
        Ok(blobs)
    }

    /// The file record of message `id`, if it carries a file and the record reads.
    pub(crate) fn record(&self, id: &MessageId) -> Option<FileRecord> {
        self.store.files().get(id).ok().flatten()
    }

    /// Sets the file of message `id` to `state` with `note` (a push to a relay reports how it
    /// went this way, keeping the state it read).
    pub(crate) fn note(&self, id: &MessageId, state: FileState, note: &str) {
        if let Err(e) = self.store.files().set_state(id, state, note) {
            tracing::debug!(error = %e, "could not note a file's state");
        }
    }

    /// The most bytes a second this node serves per blob stream (`--serve-rate`), if any.
    pub(crate) fn serve_rate(&self) -> Option<u64> {
        self.serve_rate
    }

    /// The component over an opened blob store, with its handles.
    pub(crate) fn new(blobs: BlobStore, config: &crate::FilesConfig, parts: FilesParts) -> Self {
        let me = parts.client.local_peer_id();
        Self {
            blobs,
            store: parts.store,
            client: parts.client,
            me,
            outbound: parts.outbound,
            events: parts.events,
            groups: parts.groups,
            trust: parts.trust,
            relays: parts.relays,
            max_file_bytes: config.max_file_bytes,
            running: StdMutex::new(HashMap::new()),
            next_run: AtomicU64::new(0),
            serve_rate: config.serve_rate,
        }
    }

    fn store(&self) -> &kith_store::Store {
        &self.store
    }

    fn peer_id(&self) -> PeerId {
        self.me
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads kith-blob's counters at scrape time.
#[derive(Debug)]
struct BlobCollector(Arc<kith_blob::BlobMetrics>);

impl Collector for BlobCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.0;
        for (name, help, value) in [
            (
                "blob_bytes_sent",
                "Blob bytes served to peers",
                &m.bytes_sent,
            ),
            (
                "blob_bytes_received",
                "Blob bytes fetched from peers",
                &m.bytes_received,
            ),
            (
                "blob_ranges_rejected",
                "Blob ranges refused because they did not match their hash",
                &m.ranges_rejected,
            ),
        ] {
            let counter = ConstCounter::new(value.load(Relaxed));
            counter.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        let refused = ConstCounter::new(m.refused_total());
        refused.encode(encoder.encode_descriptor(
            "blob_requests_refused",
            "Blob requests refused (garbage, oversized, unknown blob, out of range, busy)",
            None,
            MetricType::Counter,
        )?)?;
        let active = m.active_uploads.load(Relaxed) + m.active_downloads.load(Relaxed);
        let gauge = ConstGauge::new(i64::try_from(active).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "blob_active_transfers",
            "Blob uploads and downloads running now",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

/// The sealed file and what the offer says about it.
struct Prepared {
    info: kith_blob::BlobInfo,
    offer_fields: FileOffer,
    note: Option<String>,
}

/// Reads, processes (photos) and seals a file into the blob store. Blocking: run it off the
/// async workers.
fn prepare(
    blobs: &BlobStore,
    path: &Path,
    len: u64,
    options: &SendFileOptions,
) -> Result<Prepared, ServiceError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "file".to_owned());
    let mut note = None;
    if len <= MAX_PHOTO_BYTES && sniff_file(path)? {
        let bytes = std::fs::read(path).map_err(|e| {
            ServiceError::InvalidFile(format!("cannot read {}: {e}", path.display()))
        })?;
        if let Some(kind) = kith_photo::sniff(&bytes) {
            let processed = if options.original {
                kith_photo::original(&bytes, kind)
            } else {
                let photo_options = kith_photo::PhotoOptions {
                    filter: options.filter.clone(),
                    ..Default::default()
                };
                kith_photo::process(&bytes, &photo_options)
            };
            match processed {
                Ok(photo) => {
                    let info = blobs.import_sealed_reader(
                        Cursor::new(&photo.bytes),
                        photo.bytes.len() as u64,
                    )?;
                    let thumbnail = if photo.thumbnail.len() <= MAX_THUMBNAIL_BYTES {
                        photo.thumbnail
                    } else {
                        Vec::new()
                    };
                    return Ok(Prepared {
                        offer_fields: FileOffer {
                            mime: photo.mime.to_owned(),
                            name: photo_name(&name, photo.mime),
                            plain_size: photo.bytes.len() as u64,
                            width: photo.width,
                            height: photo.height,
                            thumbnail,
                            placeholder: photo.placeholder,
                            ..Default::default()
                        },
                        info,
                        note,
                    });
                }
                Err(e) => {
                    note = Some(format!(
                        "{name} looks like an image but did not decode ({e}); sent as a file"
                    ));
                }
            }
        }
    }
    // Not a photo (or one that did not decode): sealed straight from the file, streaming.
    let info = blobs.import_sealed(path)?;
    Ok(Prepared {
        offer_fields: FileOffer {
            mime: guess_mime(&name).to_owned(),
            name,
            plain_size: len,
            ..Default::default()
        },
        info,
        note,
    })
}

/// Whether the file starts like a photo kith-photo can process (reads its first bytes only).
fn sniff_file(path: &Path) -> Result<bool, ServiceError> {
    use std::io::Read as _;
    let unreadable = |e: std::io::Error| {
        ServiceError::InvalidFile(format!("cannot read {}: {e}", path.display()))
    };
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .map_err(unreadable)?
        .take(16)
        .read_to_end(&mut head)
        .map_err(unreadable)?;
    Ok(kith_photo::sniff(&head).is_some())
}

/// A re-encoded photo keeps its name with the extension of what it now is.
fn photo_name(name: &str, mime: &str) -> String {
    let ext = match mime {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        _ => return name.to_owned(),
    };
    let stem = Path::new(name)
        .file_stem()
        .map_or_else(|| name.to_owned(), |s| s.to_string_lossy().into_owned());
    format!("{stem}.{ext}")
}

/// The media type from the extension; the recipient never executes anything on it.
fn guess_mime(name: &str) -> &'static str {
    let ext = Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "pdf" => "application/pdf",
        "txt" | "md" => "text/plain",
        "zip" => "application/zip",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

impl Files {
    /// Sends a file or photo to a petname, name or peer id.
    ///
    /// The file is checked, processed if it is a photo (oriented, stripped of metadata, filtered,
    /// thumbnailed), sealed under a fresh key into the blob store, and offered in a direct
    /// message that goes through the outbox like a text. Nothing is sent when any step fails.
    pub(crate) async fn send_file(
        &self,
        target: &str,
        path: &Path,
        options: SendFileOptions,
    ) -> Result<SentFile, ServiceError> {
        self.check_file(path, &options)?;
        let peer = self.outbound.recipient(target).await?;
        let (offer, note) = self.seal_file(path, &options).await?;
        let text = shown_text(&offer);
        let record_offer = offer.clone();
        let files = self.store().files().clone();
        let me_peer = peer.to_bytes();
        let sent = self
            .outbound
            .send_shown(
                peer,
                Shown {
                    body: pb::direct_payload::Body::File(offer.to_proto()),
                    text,
                    before_store: Box::new(move |id| {
                        files.put(&FileRecord {
                            message_id: id,
                            peer_id: me_peer,
                            outgoing: true,
                            offer: record_offer,
                            state: FileState::Complete,
                            note: String::new(),
                            created_ms: now_ms(),
                            group: None,
                        })?;
                        Ok(())
                    }),
                },
            )
            .await?;
        let file = FileReport {
            id: sent.id,
            peer,
            outgoing: true,
            received_bytes: offer.size,
            offer,
            state: FileState::Complete,
            note: String::new(),
            group: None,
            sent_bytes: 0,
        };
        Ok(SentFile { sent, file, note })
    }

    /// Sends a file or photo to a group (by id or title), processed as for a person; the Megolm
    /// message carries the offer, and every member who has the file serves it to the others.
    pub(crate) async fn send_group_file(
        &self,
        group: &str,
        path: &Path,
        options: SendFileOptions,
    ) -> Result<(crate::GroupSent, FileReport, Option<String>), ServiceError> {
        self.check_file(path, &options)?;
        let group_id = self.groups.group_id(group)?;
        let (offer, note) = self.seal_file(path, &options).await?;
        let text = shown_text(&offer);
        let record_offer = offer.clone();
        let files = self.store().files().clone();
        let me = self.peer_id().to_bytes();
        let sent = self
            .groups
            .send_offer(
                group,
                Shown {
                    body: offer.to_proto(),
                    text,
                    before_store: Box::new(move |id| {
                        files.put(&FileRecord {
                            message_id: id,
                            peer_id: me,
                            outgoing: true,
                            offer: record_offer,
                            state: FileState::Complete,
                            note: String::new(),
                            created_ms: now_ms(),
                            group: Some(group_id),
                        })?;
                        Ok(())
                    }),
                },
            )
            .await?;
        let file = FileReport {
            id: sent.id,
            peer: self.peer_id(),
            outgoing: true,
            received_bytes: offer.size,
            offer,
            state: FileState::Complete,
            note: String::new(),
            group: Some(group_id),
            sent_bytes: 0,
        };
        Ok((sent, file, note))
    }

    /// The checks before anything is read or sent: the path, the size, the caption, the filter.
    fn check_file(&self, path: &Path, options: &SendFileOptions) -> Result<(), ServiceError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            ServiceError::InvalidFile(match e.kind() {
                std::io::ErrorKind::NotFound => format!("no such file: {}", path.display()),
                _ => format!("cannot read {}: {e}", path.display()),
            })
        })?;
        if meta.is_dir() {
            return Err(ServiceError::InvalidFile(format!(
                "{} is a directory; send a file",
                path.display()
            )));
        }
        let max = self.max_file_bytes;
        if meta.len() > max {
            return Err(ServiceError::InvalidFile(format!(
                "{} is {} bytes; the limit is {max} bytes",
                path.display(),
                meta.len()
            )));
        }
        if options.caption.len() > crate::MAX_TEXT_BYTES {
            return Err(ServiceError::InvalidFile(format!(
                "the caption is {} bytes; the limit is {}",
                options.caption.len(),
                crate::MAX_TEXT_BYTES
            )));
        }
        if let Some(filter) = &options.filter
            && kith_photo::matrix_for(Some(filter), kith_photo::Adjust::default()).is_err()
        {
            let names: Vec<&str> = kith_photo::presets().iter().map(|p| p.name).collect();
            return Err(ServiceError::InvalidFile(format!(
                "unknown filter '{filter}'; the filters are {}",
                names.join(", ")
            )));
        }
        Ok(())
    }

    /// Processes (photos) and seals a file off the async workers; the offer (without caption
    /// fields beyond it) and a note for the sender.
    async fn seal_file(
        &self,
        path: &Path,
        options: &SendFileOptions,
    ) -> Result<(FileOffer, Option<String>), ServiceError> {
        let len = std::fs::metadata(path)
            .map_err(|e| ServiceError::InvalidFile(format!("cannot read {}: {e}", path.display())))?
            .len();
        let blobs = self.blobs.clone();
        let owned_path = path.to_path_buf();
        let prepare_options = options.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            prepare(&blobs, &owned_path, len, &prepare_options)
        })
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))??;
        let offer = FileOffer {
            hash: *prepared.info.hash.as_bytes(),
            size: prepared.info.size,
            key: prepared.info.key.to_bytes(),
            caption: options.caption.clone(),
            ..prepared.offer_fields
        };
        Ok((offer, prepared.note))
    }

    /// Where files uploaded through the API are staged before they are sealed: a directory
    /// beside the blob store, so they stay on the same disk.
    pub(crate) fn upload_dir(&self) -> PathBuf {
        let mut dir = self.blobs.dir().as_os_str().to_owned();
        dir.push(".uploads");
        PathBuf::from(dir)
    }

    /// The largest file this node sends or accepts.
    pub(crate) fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }

    /// A photo's thumbnail (JPEG) from its offer; `None` for files without one.
    pub(crate) fn file_thumbnail(&self, id: &MessageId) -> Result<Option<Vec<u8>>, ServiceError> {
        let report = self.file(id)?;
        Ok((!report.offer.thumbnail.is_empty()).then_some(report.offer.thumbnail))
    }

    /// The decrypted bytes of a complete file, for showing in the web app; files over
    /// `max_bytes` are refused with the advice to save them instead.
    pub(crate) async fn file_content(
        &self,
        id: &MessageId,
        max_bytes: u64,
    ) -> Result<(FileReport, Vec<u8>), ServiceError> {
        let report = self.file(id)?;
        if report.offer.plain_size > max_bytes {
            return Err(ServiceError::InvalidFile(format!(
                "{} is {} bytes, too large to open here; save it with `kith save {}`",
                report.offer.name,
                report.offer.plain_size,
                hex::encode(id)
            )));
        }
        let staging = self.upload_dir().join(format!("view-{}", hex::encode(id)));
        std::fs::create_dir_all(&staging).map_err(|e| {
            ServiceError::InvalidFile(format!("cannot prepare {}: {e}", staging.display()))
        })?;
        let out = staging.join(format!("{}.{}", hex::encode(id), now_ms()));
        let saved = self.save_file(id, &out).await;
        let bytes = saved.and_then(|_| {
            std::fs::read(&out).map_err(|e| {
                ServiceError::InvalidFile(format!("cannot read {}: {e}", out.display()))
            })
        });
        let _ = std::fs::remove_file(&out);
        Ok((report, bytes?))
    }

    /// Every file sent and received, optionally only with one peer; oldest first.
    pub(crate) fn files(&self, with: Option<PeerId>) -> Result<Vec<FileReport>, ServiceError> {
        let records = self.store().files().all()?;
        Ok(records
            .into_iter()
            .filter_map(|r| {
                let peer = PeerId::from_bytes(&r.peer_id).ok()?;
                if with.is_some_and(|w| w != peer) {
                    return None;
                }
                Some(self.report(r, peer))
            })
            .collect())
    }

    /// One file by its id.
    pub(crate) fn file(&self, id: &MessageId) -> Result<FileReport, ServiceError> {
        let record = self
            .store()
            .files()
            .get(id)?
            .ok_or_else(|| ServiceError::UnknownFile(hex::encode(id)))?;
        let peer = PeerId::from_bytes(&record.peer_id)
            .map_err(|_| ServiceError::UnknownFile(hex::encode(id)))?;
        Ok(self.report(record, peer))
    }

    fn report(&self, r: FileRecord, peer: PeerId) -> FileReport {
        let sent_bytes = if r.outgoing {
            self.blobs
                .served(BlobHash::from_bytes(r.offer.hash))
                .unwrap_or(0)
        } else {
            0
        };
        let received_bytes = match r.state {
            FileState::Complete => r.offer.size,
            _ => self
                .blobs
                .status(BlobHash::from_bytes(r.offer.hash))
                .map_or(0, |s| s.verified_bytes),
        };
        FileReport {
            id: r.message_id,
            peer,
            outgoing: r.outgoing,
            offer: r.offer,
            state: r.state,
            received_bytes,
            note: r.note,
            group: r.group,
            sent_bytes,
        }
    }

    /// Decrypts a complete file to `path` (a new file, or a new file named as sent inside a
    /// directory); returns where it went and its size. Refuses to overwrite.
    pub(crate) async fn save_file(
        &self,
        id: &MessageId,
        path: &Path,
    ) -> Result<(PathBuf, u64), ServiceError> {
        let report = self.file(id)?;
        if report.state == FileState::Cancelled {
            return Err(ServiceError::FileCancelled(hex::encode(id)));
        }
        if report.state != FileState::Complete {
            return Err(ServiceError::FileIncomplete {
                id: hex::encode(id),
                received: report.received_bytes,
                size: report.offer.size,
            });
        }
        let target = if path.is_dir() {
            path.join(&report.offer.name)
        } else {
            path.to_path_buf()
        };
        if target.exists() {
            return Err(ServiceError::InvalidFile(format!(
                "{} already exists; choose another path",
                target.display()
            )));
        }
        let blobs = self.blobs.clone();
        let hash = BlobHash::from_bytes(report.offer.hash);
        let key = BlobKey::from_bytes(report.offer.key);
        let out = target.clone();
        let written = tokio::task::spawn_blocking(move || blobs.export_decrypted(hash, &key, &out))
            .await
            .map_err(|e| ServiceError::Task(e.to_string()))??;
        Ok((target, written))
    }

    /// Checks an offer from `peer` and records it with the message; returns the text the message
    /// shows. An `Err` is the reason the offer is refused.
    pub(crate) fn record_incoming_file(
        &self,
        peer: PeerId,
        id: MessageId,
        offer: pb::FileOffer,
    ) -> Result<String, String> {
        // Nothing is fetched from someone in requests until they are accepted.
        let accepted = self.is_accepted(peer);
        self.record_offer(peer, id, offer, None, accepted)
    }

    /// Records a file offered in a group and starts fetching it at once (from the sender or any
    /// member who has it); returns the text the message shows.
    pub(crate) fn record_incoming_group_file(
        self: &Arc<Self>,
        group: kith_store::GroupId,
        sender: PeerId,
        id: MessageId,
        offer: pb::FileOffer,
    ) -> Result<String, String> {
        let text = self.record_offer(sender, id, offer, Some(group), true)?;
        self.start_download(id);
        Ok(text)
    }

    fn record_offer(
        &self,
        peer: PeerId,
        id: MessageId,
        offer: pb::FileOffer,
        group: Option<kith_store::GroupId>,
        accepted: bool,
    ) -> Result<String, String> {
        let offer = FileOffer::try_from(offer)?;
        let max = self.max_file_bytes;
        if offer.plain_size > max {
            return Err(format!(
                "file of {} bytes is over this node's limit of {max}",
                offer.plain_size
            ));
        }
        if offer.caption.len() > crate::MAX_TEXT_BYTES {
            return Err("oversized caption".into());
        }
        let (state, note) = if accepted {
            (FileState::Downloading, String::new())
        } else {
            (
                FileState::Paused,
                "from someone you have not accepted; accept them to download".to_owned(),
            )
        };
        let text = shown_text(&offer);
        self.store()
            .files()
            .insert_new(&FileRecord {
                message_id: id,
                peer_id: peer.to_bytes(),
                outgoing: false,
                offer,
                state,
                note,
                created_ms: now_ms(),
                group,
            })
            .map_err(|e| format!("cannot record the file: {e}"))?;
        Ok(text)
    }

    /// Starts fetching a recorded incoming file unless it is complete, paused or already running.
    pub(crate) fn start_download(self: &Arc<Self>, id: MessageId) {
        let Ok(Some(record)) = self.store().files().get(&id) else {
            return;
        };
        if record.outgoing || record.state != FileState::Downloading {
            return;
        }
        let Ok(peer) = PeerId::from_bytes(&record.peer_id) else {
            return;
        };
        let files = self;
        let mut running = lock(&files.running);
        if running.contains_key(&id) {
            return;
        }
        let run = files.next_run.fetch_add(1, Ordering::Relaxed);
        let weak = Arc::downgrade(self);
        // Made here and moved into the task, so it drops (and lets go of the entry) even when
        // the task is aborted before it first runs.
        let guard = Running {
            inner: weak.clone(),
            id,
            run,
        };
        // Spawned while `running` is locked: the guard cannot remove its entry before it is
        // inserted.
        let task = tokio::spawn(async move {
            let _running = guard;
            download(weak, peer, record).await;
        });
        running.insert(id, (run, task.abort_handle()));
    }

    /// Stops the running download of file `id`, if any, and waits (bounded) until its task has
    /// ended, so nothing writes into the blob afterwards.
    async fn stop_download(&self, id: &MessageId) -> Result<(), ServiceError> {
        let files = self;
        let Some(abort) = lock(&files.running).get(id).map(|(_, a)| a.clone()) else {
            return Ok(());
        };
        abort.abort();
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        while lock(&files.running).contains_key(id) {
            if tokio::time::Instant::now() >= deadline {
                return Err(ServiceError::Task(format!(
                    "the download of file {} did not stop within {} s; try again",
                    hex::encode(id),
                    STOP_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Stops a file's transfer for good: an incoming file's download ends and its partial
    /// ciphertext is deleted; a file we sent is no longer served (its ciphertext is deleted too,
    /// a range being sent stops, and an offer still queued for an offline recipient is
    /// withdrawn). Either way the file is `cancelled` and nothing retries it, across restarts.
    /// Cancelling a cancelled file is harmless; a file that has fully arrived is kept (delete
    /// the saved copy instead).
    pub(crate) async fn cancel_file(&self, id: &MessageId) -> Result<FileReport, ServiceError> {
        let record = self
            .store()
            .files()
            .get(id)?
            .ok_or_else(|| ServiceError::UnknownFile(hex::encode(id)))?;
        if record.state == FileState::Cancelled {
            return self.file(id);
        }
        let from: &[FileState] = if record.outgoing {
            &[FileState::Complete]
        } else {
            &[FileState::Downloading, FileState::Paused, FileState::Failed]
        };
        let note = "cancelled";
        // The state first (one compare-and-swap): from here no start, resume or retry picks it
        // up, and a download finishing right now cannot mark it complete.
        if self
            .store()
            .files()
            .transition(id, from, FileState::Cancelled, note)?
            .is_none()
        {
            let now = self.file(id)?;
            return match now.state {
                FileState::Cancelled => Ok(now),
                FileState::Complete => Err(ServiceError::FileComplete(hex::encode(id))),
                state => Err(ServiceError::Task(format!(
                    "file {} changed to {state:?} while being cancelled; try again",
                    hex::encode(id)
                ))),
            };
        }
        self.stop_download(id).await?;
        let hash = BlobHash::from_bytes(record.offer.hash);
        // The same bytes may belong to another file (sent twice, or sent and received): keep
        // them for that one.
        let shared = self.store().files().all()?.iter().any(|r| {
            r.message_id != *id
                && r.offer.hash == record.offer.hash
                && r.state != FileState::Cancelled
        });
        if !shared {
            self.blobs.remove(hash)?;
        }
        if record.outgoing && record.group.is_none() {
            self.withdraw_queued_offer(&record);
        }
        self.store().flush().await?;
        self.file(id)
    }

    /// An offer still waiting in the outbox (the recipient was offline) is not sent any more.
    fn withdraw_queued_offer(&self, record: &FileRecord) {
        let Ok(peer) = PeerId::from_bytes(&record.peer_id) else {
            return;
        };
        if let Err(e) = self
            .outbound
            .withdraw(peer, &record.message_id, "the file was cancelled")
        {
            tracing::warn!(file = %hex::encode(record.message_id), error = %e, "cannot withdraw a cancelled file's offer");
        }
    }

    /// Deletes ciphertext no file needs any more: blobs of cancelled files and blobs no file
    /// record names (partial downloads whose record is gone), older than an hour (a blob being
    /// sealed has no record yet). The relay's store of blobs held for others is not touched.
    /// Returns the blobs removed.
    pub(crate) fn collect_blob_garbage(&self) -> Result<usize, ServiceError> {
        let wanted: HashSet<[u8; 32]> = self
            .store()
            .files()
            .all()?
            .into_iter()
            .filter(|r| r.state != FileState::Cancelled)
            .map(|r| r.offer.hash)
            .collect();
        let blobs = &self.blobs;
        let mut removed = 0;
        for status in blobs.list() {
            if wanted.contains(status.hash.as_bytes()) {
                continue;
            }
            let old_enough = blobs
                .modified(status.hash)
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= GC_MIN_AGE);
            if !old_enough {
                continue;
            }
            // A blob in use by a running download is named by its record; one removed under a
            // serve stops being served at the next read.
            if blobs.remove(status.hash)? {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "deleted ciphertext no file needs any more");
        }
        Ok(removed)
    }

    /// Whether `peer` is out of requests (files from them download at once).
    fn is_accepted(&self, peer: PeerId) -> bool {
        self.trust.is_accepted(peer)
    }

    /// Resumes every unfinished download from `peer` (it connected, or was accepted).
    pub(crate) fn resume_downloads_from(self: &Arc<Self>, peer: PeerId) {
        let Ok(records) = self.store().files().all() else {
            return;
        };
        let accepted = self.is_accepted(peer);
        for r in records
            .into_iter()
            .filter(|r| !r.outgoing && r.peer_id == peer.to_bytes())
        {
            if r.state == FileState::Paused && accepted {
                let _ = self.store().files().transition(
                    &r.message_id,
                    &[FileState::Paused],
                    FileState::Downloading,
                    "",
                );
            }
            self.start_download(r.message_id);
        }
    }

    /// Resumes every unfinished download (at start and after each mailbox sync), and collects
    /// ciphertext no file needs any more, off the async workers.
    pub(crate) fn resume_all_downloads(self: &Arc<Self>) {
        let Ok(records) = self.store().files().all() else {
            return;
        };
        for r in records.into_iter().filter(|r| !r.outgoing) {
            self.start_download(r.message_id);
        }
        let files = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = files.collect_blob_garbage() {
                tracing::warn!(error = %e, "cannot collect unused file ciphertext");
            }
        });
    }
}

/// `Node`'s file operations (what kith-api, the CLI, the router and the mailbox client call):
/// delegations to [`Files`].
impl Node {
    /// Sends a file or photo to a petname, name or peer id.
    ///
    /// The file is checked, processed if it is a photo (oriented, stripped of metadata, filtered,
    /// thumbnailed), sealed under a fresh key into the blob store, and offered in a direct
    /// message that goes through the outbox like a text. Nothing is sent when any step fails.
    pub async fn send_file(
        &self,
        target: &str,
        path: &Path,
        options: SendFileOptions,
    ) -> Result<SentFile, ServiceError> {
        self.inner.files.send_file(target, path, options).await
    }

    /// Sends a file or photo to a group (by id or title), processed as for a person; the Megolm
    /// message carries the offer, and every member who has the file serves it to the others.
    pub async fn send_group_file(
        &self,
        group: &str,
        path: &Path,
        options: SendFileOptions,
    ) -> Result<(crate::GroupSent, FileReport, Option<String>), ServiceError> {
        self.inner.files.send_group_file(group, path, options).await
    }

    /// Where files uploaded through the API are staged before they are sealed: a directory
    /// beside the blob store, so they stay on the same disk.
    pub fn upload_dir(&self) -> PathBuf {
        self.inner.files.upload_dir()
    }

    /// The largest file this node sends or accepts.
    pub fn max_file_bytes(&self) -> u64 {
        self.inner.files.max_file_bytes()
    }

    /// A photo's thumbnail (JPEG) from its offer; `None` for files without one.
    pub fn file_thumbnail(&self, id: &MessageId) -> Result<Option<Vec<u8>>, ServiceError> {
        self.inner.files.file_thumbnail(id)
    }

    /// The decrypted bytes of a complete file, for showing in the web app; files over
    /// `max_bytes` are refused with the advice to save them instead.
    pub async fn file_content(
        &self,
        id: &MessageId,
        max_bytes: u64,
    ) -> Result<(FileReport, Vec<u8>), ServiceError> {
        self.inner.files.file_content(id, max_bytes).await
    }

    /// Every file sent and received, optionally only with one peer; oldest first.
    pub fn files(&self, with: Option<PeerId>) -> Result<Vec<FileReport>, ServiceError> {
        self.inner.files.files(with)
    }

    /// One file by its id.
    pub fn file(&self, id: &MessageId) -> Result<FileReport, ServiceError> {
        self.inner.files.file(id)
    }

    /// Decrypts a complete file to `path` (a new file, or a new file named as sent inside a
    /// directory); returns where it went and its size. Refuses to overwrite.
    pub async fn save_file(
        &self,
        id: &MessageId,
        path: &Path,
    ) -> Result<(PathBuf, u64), ServiceError> {
        self.inner.files.save_file(id, path).await
    }

    /// Stops a file's transfer for good: an incoming file's download ends and its partial
    /// ciphertext is deleted; a file we sent is no longer served (its ciphertext is deleted too,
    /// a range being sent stops, and an offer still queued for an offline recipient is
    /// withdrawn). Either way the file is `cancelled` and nothing retries it, across restarts.
    /// Cancelling a cancelled file is harmless; a file that has fully arrived is kept (delete
    /// the saved copy instead).
    pub async fn cancel_file(&self, id: &MessageId) -> Result<FileReport, ServiceError> {
        self.inner.files.cancel_file(id).await
    }

    /// Deletes ciphertext no file needs any more: blobs of cancelled files and blobs no file
    /// record names (partial downloads whose record is gone), older than an hour (a blob being
    /// sealed has no record yet). The relay's store of blobs held for others is not touched.
    /// Returns the blobs removed.
    pub fn collect_blob_garbage(&self) -> Result<usize, ServiceError> {
        self.inner.files.collect_blob_garbage()
    }
}

/// Removes a download's entry from `running` when its task ends, however it ends (aborted by a
/// cancel included), unless a newer run of the same file replaced it.
struct Running {
    inner: Weak<Files>,
    id: MessageId,
    run: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(files) = self.inner.upgrade() {
            let mut running = lock(&files.running);
            if running
                .get(&self.id)
                .is_some_and(|(run, _)| *run == self.run)
            {
                running.remove(&self.id);
            }
        }
    }
}

/// What the chat shows for a file message: its caption, or its name.
fn shown_text(offer: &FileOffer) -> String {
    if offer.caption.trim().is_empty() {
        offer.name.clone()
    } else {
        offer.caption.clone()
    }
}

/// Fetches one file: a few attempts with growing pauses, each asking the holders in turn (the
/// sender, then the group's other members for a group file, then our own relays, which keep
/// files sent while we were offline) only for what is still missing. Gives up for now after
/// [`DOWNLOAD_ATTEMPTS`]; the sender's next connection, the next mailbox sync or the next start
/// resumes it.
async fn download(inner: Weak<Files>, peer: PeerId, record: FileRecord) {
    let hash = BlobHash::from_bytes(record.offer.hash);
    let id = record.message_id;
    let mut attempt = 0;
    let mut disk_wait = DISK_FULL_RETRY;
    while attempt < DOWNLOAD_ATTEMPTS {
        let Some(node) = inner.upgrade() else {
            return;
        };
        let mut disk_full = false;
        for holder in node.holders_of(peer, &record) {
            match fetch_from(&node, holder, peer, &record).await {
                Fetched::Complete => {
                    // Only from downloading: a file cancelled meanwhile stays cancelled.
                    let done = node.store().files().transition(
                        &id,
                        &[FileState::Downloading],
                        FileState::Complete,
                        "",
                    );
                    if matches!(done, Ok(Some(_))) && node.store().flush().await.is_ok() {
                        node.events.emit(MessageEvent::FileProgress {
                            id,
                            peer,
                            received: record.offer.size,
                            size: record.offer.size,
                        });
                    }
                    if holder != peer || attempt > 0 {
                        node.relays.release(*hash.as_bytes());
                    }
                    return;
                }
                Fetched::Stop => return,
                Fetched::DiskFull => {
                    disk_full = true;
                    break;
                }
                Fetched::TryNext => {}
            }
        }
        drop(node);
        if disk_full {
            // Paused with a note (what verified is kept); try again by itself once space may
            // have been freed, waiting longer each time, for as long as the node runs.
            tokio::time::sleep(disk_wait).await;
            disk_wait = (disk_wait * 2).min(Duration::from_secs(300));
            let Some(node) = inner.upgrade() else {
                return;
            };
            match node.store().files().transition(
                &id,
                &[FileState::Paused],
                FileState::Downloading,
                "",
            ) {
                Ok(Some(_)) => {}
                _ => return,
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(500 * (1 << attempt.min(6)))).await;
        attempt += 1;
    }
}

/// How one fetch from one holder ended.
enum Fetched {
    Complete,
    /// Another download of the blob runs: this run ends.
    Stop,
    /// The disk is full: paused, retried later.
    DiskFull,
    TryNext,
}

async fn fetch_from(node: &Files, holder: PeerId, peer: PeerId, record: &FileRecord) -> Fetched {
    let hash = BlobHash::from_bytes(record.offer.hash);
    let id = record.message_id;
    let stream =
        match tokio::time::timeout(OPEN_TIMEOUT, node.client.open_blob_stream(holder)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%holder, error = %e, "cannot open a blob stream");
                return Fetched::TryNext;
            }
            Err(_) => return Fetched::TryNext,
        };
    let blobs = node.blobs.clone();
    let status_of = blobs.clone();
    let events = node.events.clone();
    let size = record.offer.size;
    // One event per MiB at most: a chunk group is 16 KiB, and a flood of events would push
    // other subscribers into `Lagged`.
    let mut reported = 0u64;
    let outcome = kith_blob::fetch_missing(stream, &blobs, hash, size, move |p| {
        if p.written >= reported + PROGRESS_EVERY {
            reported = p.written;
            events.emit(MessageEvent::FileProgress {
                id,
                peer,
                received: size.saturating_sub(p.wanted) + p.written,
                size,
            });
        }
    })
    .await;
    match outcome {
        Ok(done) if done.complete => Fetched::Complete,
        Ok(_) => Fetched::TryNext,
        Err(FetchError::Store(kith_blob::StoreError::DiskFull { path })) => {
            let kept = status_of.status(hash).map_or(0, |st| st.verified_bytes);
            let dir = path.parent().unwrap_or(&path).display().to_string();
            tracing::warn!(file = %hex::encode(id), %dir, kept, "disk full while receiving a file; paused");
            let _ = node.store().files().transition(
                &id,
                &[FileState::Downloading],
                FileState::Paused,
                &format!(
                    "the disk holding {dir} is full; free space there and the transfer resumes by itself ({kept} of {size} bytes kept)"
                ),
            );
            let _ = node.store().flush().await;
            Fetched::DiskFull
        }
        Err(FetchError::Store(kith_blob::StoreError::Busy { .. })) => Fetched::Stop,
        Err(FetchError::Refused { status }) => {
            tracing::debug!(%holder, file = %hex::encode(id), ?status, "holder does not have the file");
            Fetched::TryNext
        }
        Err(e) => {
            tracing::info!(%holder, file = %hex::encode(id), error = %e, "file transfer stopped; trying again");
            Fetched::TryNext
        }
    }
}

impl Files {
    /// Who may hold a file, in the order to ask: its sender, a group file's other members, then
    /// our mailbox relays.
    fn holders_of(&self, sender: PeerId, record: &FileRecord) -> Vec<PeerId> {
        let mut holders = vec![sender];
        if let Some(group) = record.group {
            holders.extend(
                self.groups
                    .members(&group)
                    .into_iter()
                    .filter(|p| *p != sender && *p != self.peer_id()),
            );
        }
        for relay in self.relays.holders() {
            if !holders.contains(&relay) {
                holders.push(relay);
            }
        }
        holders
    }
}

/// A stream whose writes are held to `rate` bytes a second (a token bucket with a 100 ms burst).
pub(crate) struct Throttled<S> {
    inner: S,
    rate: f64,
    allowance: f64,
    last: std::time::Instant,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Throttled<S> {
    /// `inner`, its writes held to `rate` bytes a second.
    pub(crate) fn new(inner: S, rate: u64) -> Self {
        Self {
            inner,
            rate: rate.max(1024) as f64,
            allowance: 0.0,
            last: std::time::Instant::now(),
            sleep: None,
        }
    }
}

impl<S: futures::AsyncRead + Unpin> futures::AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: futures::AsyncWrite + Unpin> futures::AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            let now = std::time::Instant::now();
            let burst = (self.rate / 10.0).max(16_384.0);
            let elapsed = now.duration_since(self.last).as_secs_f64();
            self.allowance = (self.allowance + elapsed * self.rate).min(burst);
            self.last = now;
            if self.allowance >= 1.0 {
                break;
            }
            let wait = Duration::from_secs_f64((1024.0 - self.allowance) / self.rate);
            self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
        }
        let n = buf.len().min(self.allowance as usize);
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(k)) = &written {
            self.allowance -= *k as f64;
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// The filter presets, for `kith filters` and the web app's preview.
pub fn filter_presets() -> &'static [kith_photo::Preset] {
    kith_photo::presets()
}
