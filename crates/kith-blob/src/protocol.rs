//! `serve` and `fetch_missing`: the two ends of `/kith/blob/1.0.0` over any byte stream.
//!
//! ```text
//! client (fetch_missing)                       server (serve)
//!   missing ranges from the store
//!   Request{hash, size, ranges}  ──────────▶   decode (cap, validate), check store
//!                                 ◀──────────  status; if Ok: size, then pairs and groups
//!   verify each item against the root,
//!   write verified ones, record in batches
//! ```

use std::io;
use std::sync::atomic::Ordering;

use bao_tree::io::fsm::{BaoContentItem, ResponseDecoder, ResponseDecoderNext};
use bao_tree::io::{DecodeError, EncodeError, Leaf, Parent};
use bao_tree::{ChunkNum, ChunkRanges};
use futures::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::io::{StreamReader, StreamWriter};
use crate::metrics::GaugeGuard;
use crate::store::{BlobHash, BlobStore, GROUP_BYTES, PartialWriter, StoreError};
use crate::wire::{Frame, HoldRequest, MAX_RANGES, MAX_REASON, Request, Status};

/// Bounds one `serve` call enforces, so a peer cannot make the node do unbounded work.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Largest request frame accepted, in bytes. Default 4 KiB: room for hundreds of ranges.
    pub max_request_frame: usize,
    /// Uploads this store runs at once before answering `Busy`. Default 16.
    pub max_uploads: u64,
    /// Requests served on one stream before it is closed. Default 64.
    pub max_requests_per_stream: u32,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_request_frame: 4096,
            max_uploads: 16,
            max_requests_per_stream: 64,
        }
    }
}

impl ServeLimits {
    /// Sets [`ServeLimits::max_uploads`].
    pub fn with_max_uploads(mut self, n: u64) -> Self {
        self.max_uploads = n;
        self
    }
}

/// What one `serve` call did, for logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeSummary {
    /// Requests answered with the ranges.
    pub served: u32,
    /// Requests refused with a status.
    pub refused: u32,
    /// Hold requests that left a complete blob here.
    pub held: u32,
}

/// Why `serve` closed a stream early. Refusals a peer can recover from are answered with a
/// status and do not end the stream; these do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The peer announced a request frame above the cap (answered `TooLarge`).
    #[error("request frame of {len} bytes exceeds the {max}-byte cap")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// The cap.
        max: usize,
    },
    /// The frame length prefix was not a valid varint (answered `BadRequest`).
    #[error("request frame length is not a valid varint")]
    BadFrame,
    /// The peer sent more requests than one stream may carry.
    #[error("more than {0} requests on one stream")]
    TooManyRequests(u32),
    /// This store's own copy failed verification while being sent: the group was dropped from
    /// the record and will be fetched again; the peer sees a truncated response.
    #[error("local copy of blob {hash} is corrupt at byte {offset}; dropped it from the record")]
    LocalCorruption {
        /// The blob.
        hash: BlobHash,
        /// Start of the corrupt chunk group.
        offset: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream failed.
    #[error("blob stream i/o: {0}")]
    Io(#[from] io::Error),
}

/// Answers `/kith/blob/1.0.0` requests on `stream` from `store` until the peer closes it.
///
/// Every refusal is counted in the store's [`crate::BlobMetrics`] and answered with a [`Status`];
/// garbage inside a well-framed request leaves the stream usable, a bad frame closes it.
/// Cancel-safe: dropping the future just drops the stream. Hold requests are refused
/// (`NotAccepted`); a relay uses [`serve_with`].
pub async fn serve<S>(
    stream: S,
    store: &BlobStore,
    limits: &ServeLimits,
) -> Result<ServeSummary, ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_with(stream, std::slice::from_ref(store), None, limits).await
}

/// A blob someone asks this node to keep (a relay holding blobs for its offline users).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldOffer {
    /// Content address of the ciphertext.
    pub hash: BlobHash,
    /// Ciphertext length.
    pub size: u64,
    /// For whom, as the client said (the service's business: a recipient's peer id).
    pub tag: Vec<u8>,
}

/// Why a hold request was refused; the reason is sent to the client as written, so make it
/// something a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRefusal {
    /// The status (`Full`, `NotAccepted`, `Busy`, ...).
    pub status: Status,
    /// A sentence for the user.
    pub reason: String,
}

/// Decides whether this node keeps a blob it is offered, and where. The service implements it
/// (registration, per-user quota); kith-blob only carries the bytes and verifies them.
pub trait HoldPolicy: Send + Sync {
    /// The store to receive the blob into, or the refusal to send back.
    fn admit(&self, offer: &HoldOffer) -> Result<BlobStore, HoldRefusal>;
}

/// [`serve`] over several stores (a ranged request is answered from the first that holds the
/// blob) and, with `hold`, accepting hold requests: the client pushes the ranges the admitted
/// store lacks, each verified against the hash before it is written.
pub async fn serve_with<S>(
    stream: S,
    stores: &[BlobStore],
    hold: Option<&dyn HoldPolicy>,
    limits: &ServeLimits,
) -> Result<ServeSummary, ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Every answer ends with a flush, so buffering only merges what one answer writes: the
    // 64-byte hash pairs travel with the chunk groups instead of as frames of their own.
    let mut stream = buffered(stream);
    let Some(store) = stores.first() else {
        return Ok(ServeSummary::default());
    };
    let metrics = store.metrics().clone();
    let mut summary = ServeSummary::default();
    let mut requests = 0u32;
    loop {
        let len = match read_frame_len(&mut stream).await? {
            FrameLen::Closed => {
                let _ = stream.close().await;
                return Ok(summary);
            }
            FrameLen::Invalid => {
                refuse(&mut stream, store, Status::BadRequest).await?;
                let _ = stream.close().await;
                return Err(ServeError::BadFrame);
            }
            FrameLen::Len(len) => len,
        };
        if len > limits.max_request_frame as u64 {
            refuse(&mut stream, store, Status::TooLarge).await?;
            let _ = stream.close().await;
            return Err(ServeError::FrameTooLarge {
                len,
                max: limits.max_request_frame,
            });
        }
        requests += 1;
        if requests > limits.max_requests_per_stream {
            refuse(&mut stream, store, Status::Busy).await?;
            return Err(ServeError::TooManyRequests(limits.max_requests_per_stream));
        }
        let mut body = vec![0u8; len as usize];
        stream.read_exact(&mut body).await?;
        let request = match Frame::decode(&body) {
            Ok(Frame::Get(r)) => r,
            Ok(Frame::Hold(h)) => {
                match serve_hold(&mut stream, store, hold, limits, h).await? {
                    true => summary.held += 1,
                    false => summary.refused += 1,
                }
                continue;
            }
            Err(reason) => {
                tracing::debug!(%reason, "refusing undecodable blob request");
                refuse(&mut stream, store, Status::BadRequest).await?;
                summary.refused += 1;
                continue;
            }
        };
        let hash = BlobHash::from_bytes(request.hash);
        let mut found = Err(Status::UnknownBlob);
        for candidate in stores {
            found = check(candidate, &request);
            if matches!(found, Ok(_) | Err(Status::OutOfRange)) {
                break;
            }
        }
        let reader = match found {
            Ok(reader) => reader,
            Err(status) => {
                tracing::debug!(%hash, ?status, "refusing blob request");
                refuse(&mut stream, store, status).await?;
                summary.refused += 1;
                continue;
            }
        };
        let guard = GaugeGuard::new(&metrics.active_uploads);
        if metrics.active_uploads.load(Ordering::Relaxed) > limits.max_uploads {
            drop(guard);
            refuse(&mut stream, store, Status::Busy).await?;
            summary.refused += 1;
            continue;
        }
        let mut head = [0u8; 9];
        head[0] = Status::Ok as u8;
        head[1..].copy_from_slice(&reader.size.to_le_bytes());
        stream.write_all(&head).await?;
        metrics
            .bytes_sent
            .fetch_add(head.len() as u64, Ordering::Relaxed);
        let served = reader.served.clone();
        let writer = StreamWriter {
            inner: &mut stream,
            counter: &metrics.bytes_sent,
            progress: None,
            written: 0,
            also: Some(&served),
        };
        let encoded = bao_tree::io::fsm::encode_ranges_validated(
            reader.data,
            reader.outboard,
            &request.ranges,
            writer,
        )
        .await;
        match encoded {
            Ok(()) => {}
            Err(EncodeError::LeafHashMismatch(chunk)) => {
                // What is buffered was checked before it was written: the peer keeps it.
                let _ = stream.flush().await;
                let offset = chunk.to_bytes() / GROUP_BYTES * GROUP_BYTES;
                metrics.local_corruption.fetch_add(1, Ordering::Relaxed);
                let owner = stores
                    .iter()
                    .find(|s| s.is_complete(hash).is_ok())
                    .unwrap_or(store);
                owner.forget_group(hash, offset / GROUP_BYTES)?;
                return Err(ServeError::LocalCorruption { hash, offset });
            }
            Err(EncodeError::Io(e)) => return Err(e.into()),
            Err(e) => return Err(io::Error::other(e.to_string()).into()),
        }
        stream.flush().await?;
        summary.served += 1;
        drop(guard);
    }
}

/// Answers one hold request: admit, say what is missing, receive and verify it, say how it went.
/// `Ok(true)`: the blob is complete here; `Ok(false)`: refused (answered); `Err`: the stream is
/// unusable (a bad range, i/o).
async fn serve_hold<S>(
    stream: &mut S,
    first: &BlobStore,
    hold: Option<&dyn HoldPolicy>,
    limits: &ServeLimits,
    request: HoldRequest,
) -> Result<bool, ServeError>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    let hash = BlobHash::from_bytes(request.hash);
    let offer = HoldOffer {
        hash,
        size: request.size,
        tag: request.tag,
    };
    let refusal = |status, reason: &str| HoldRefusal {
        status,
        reason: reason.to_owned(),
    };
    let admitted = match hold {
        None => Err(refusal(
            Status::NotAccepted,
            "this node keeps no blobs for others (it is not a relay)",
        )),
        Some(policy) => policy.admit(&offer),
    };
    let store = match admitted.and_then(|store| {
        store
            .create_partial(hash, offer.size)
            .map_err(|e| match e {
                StoreError::DiskFull { .. } => refusal(Status::Full, "the relay's disk is full"),
                e => refusal(Status::BadRequest, &e.to_string()),
            })?;
        Ok(store)
    }) {
        Ok(store) => store,
        Err(r) => {
            tracing::debug!(%hash, status = ?r.status, reason = %r.reason, "refusing to hold a blob");
            refuse_with(stream, first, r.status, &r.reason).await?;
            return Ok(false);
        }
    };
    let metrics = store.metrics().clone();
    let guard = GaugeGuard::new(&metrics.active_downloads);
    if metrics.active_downloads.load(Ordering::Relaxed) > limits.max_uploads {
        drop(guard);
        refuse_with(
            stream,
            &store,
            Status::Busy,
            "the relay is receiving too many blobs; retry later",
        )
        .await?;
        return Ok(false);
    }
    let mut writer = match store.writer(hash) {
        Ok(w) => w,
        Err(StoreError::Busy { .. }) => {
            refuse_with(
                stream,
                &store,
                Status::Busy,
                "this blob is being received already",
            )
            .await?;
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let mut ranges = ChunkRanges::empty();
    for r in store.missing(hash)?.iter().take(MAX_RANGES) {
        ranges |= ChunkRanges::from(ChunkNum(r.start / 1024)..ChunkNum(r.end.div_ceil(1024)));
    }
    let mut answer = vec![Status::Ok as u8];
    crate::wire::put_ranges(&mut answer, &ranges);
    stream.write_all(&answer).await?;
    stream.flush().await?;
    if !ranges.is_empty() {
        let reader = StreamReader {
            inner: &mut *stream,
            counter: &metrics.bytes_received,
            local: 0,
        };
        match receive_ranges(reader, &mut writer, hash, ranges, &metrics, |_| {}).await {
            Ok(_) => {}
            Err(FetchError::Store(StoreError::DiskFull { .. })) => {
                refuse_with(stream, &store, Status::Full, "the relay's disk is full").await?;
                return Ok(false);
            }
            Err(FetchError::Store(e)) => return Err(e.into()),
            Err(FetchError::Io(e)) => return Err(e.into()),
            Err(e) => {
                // A bad range (counted) or a short stream: say so, and end the stream, whose
                // remaining bytes are unusable.
                let _ = refuse_with(stream, &store, Status::BadRequest, &e.to_string()).await;
                let _ = stream.close().await;
                return Err(io::Error::other(e.to_string()).into());
            }
        }
    }
    let complete = writer.is_complete();
    drop(writer);
    stream
        .write_all(&[Status::Ok as u8, u8::from(complete)])
        .await?;
    stream.flush().await?;
    Ok(complete)
}

/// Bytes buffered on each side of a blob stream. A chunk group is 16 KiB and its hash pairs 64
/// bytes each: unbuffered, each became a write (a yamux frame or QUIC write of its own) or a
/// read that polls the stream; 64 KiB batches about four groups with their pairs.
const STREAM_BUFFER: usize = 64 * 1024;

/// `stream` with a read buffer and a write buffer. Callers flush after every message they send.
fn buffered<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
) -> futures::io::BufWriter<futures::io::BufReader<S>> {
    futures::io::BufWriter::with_capacity(
        STREAM_BUFFER,
        futures::io::BufReader::with_capacity(STREAM_BUFFER, stream),
    )
}

/// Checks a decoded request against the store; the reader to serve it, or the refusal.
fn check(store: &BlobStore, request: &Request) -> Result<crate::store::BlobReader, Status> {
    let hash = BlobHash::from_bytes(request.hash);
    let reader = store.reader(hash).map_err(|_| Status::UnknownBlob)?;
    if request.size.is_some_and(|s| s != reader.size) {
        return Err(Status::UnknownBlob);
    }
    let chunks = ChunkNum::chunks(reader.size).0;
    let group_chunks = GROUP_BYTES / 1024;
    for pair in request.ranges.boundaries().chunks(2) {
        let [start, end] = pair else {
            // An open-ended range cannot come out of `Request::decode`; refuse it anyway.
            return Err(Status::OutOfRange);
        };
        if end.0 > chunks {
            return Err(Status::OutOfRange);
        }
        let groups = start.0 / group_chunks..end.0.div_ceil(group_chunks);
        if groups.clone().any(|g| !reader.have.get(g)) {
            return Err(Status::NotHeld);
        }
    }
    Ok(reader)
}

/// Refuses with a status and a reason (hold answers carry one).
async fn refuse_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    store: &BlobStore,
    status: Status,
    reason: &str,
) -> io::Result<()> {
    store.metrics().refused(status);
    let mut cut = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = vec![status as u8];
    crate::wire::put_varint(&mut out, cut as u64);
    out.extend_from_slice(&reason.as_bytes()[..cut]);
    stream.write_all(&out).await?;
    store
        .metrics()
        .bytes_sent
        .fetch_add(out.len() as u64, Ordering::Relaxed);
    stream.flush().await
}

async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    store: &BlobStore,
    status: Status,
) -> io::Result<()> {
    store.metrics().refused(status);
    stream.write_all(&[status as u8]).await?;
    store.metrics().bytes_sent.fetch_add(1, Ordering::Relaxed);
    stream.flush().await
}

enum FrameLen {
    Closed,
    Invalid,
    Len(u64),
}

async fn read_frame_len<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<FrameLen> {
    let mut v = 0u64;
    for i in 0..10 {
        let mut b = [0u8; 1];
        if stream.read(&mut b).await? == 0 {
            return if i == 0 {
                Ok(FrameLen::Closed)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if i == 9 && b[0] > 1 {
            return Ok(FrameLen::Invalid);
        }
        v |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(FrameLen::Len(v));
        }
    }
    Ok(FrameLen::Invalid)
}

/// Progress of one `fetch_missing`, reported after each verified chunk group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Verified bytes written so far in this fetch.
    pub written: u64,
    /// Bytes that were missing when this fetch started.
    pub wanted: u64,
}

/// What a `fetch_missing` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOutcome {
    /// Bytes read from the stream (payload and hashes), for accounting.
    pub bytes_received: u64,
    /// Verified ciphertext bytes written to the store.
    pub bytes_written: u64,
    /// Whether the blob is now complete.
    pub complete: bool,
}

/// Why a fetch stopped. Everything verified before the failure is kept and recorded, so the
/// caller can retry, from this holder or another, and only the rest is asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The holder refused the request.
    #[error("holder refused the request: {status:?}")]
    Refused {
        /// Its answer.
        status: Status,
    },
    /// The holder sent data that does not match the hash: it was not written, and the fetch
    /// stopped. Try another holder.
    #[error("holder sent a bad range of blob {hash} at byte {offset}; nothing unverified was kept")]
    Rejected {
        /// The blob.
        hash: BlobHash,
        /// Start of the first range that failed verification.
        offset: u64,
    },
    /// The stream ended before every requested range arrived.
    #[error("transfer of blob {hash} cut off after {written} verified bytes; retry to resume")]
    Truncated {
        /// The blob.
        hash: BlobHash,
        /// Verified bytes written before the cut.
        written: u64,
    },
    /// The holder's response was malformed.
    #[error("malformed response from holder: {0}")]
    BadResponse(&'static str),
    /// The local store failed (including [`StoreError::DiskFull`] and [`StoreError::Busy`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream failed.
    #[error("blob stream i/o: {0}")]
    Io(#[from] io::Error),
}

/// Asks the holder on `stream` for the ranges of `hash` still missing from `store`, verifies
/// every hash pair and chunk group against the hash before writing it, and records progress.
///
/// `size` is the ciphertext size from the chat message; a wrong size fails verification.
/// Cancel-safe for the store: dropping the future records what was verified so far (the writer
/// waits for its last fsync when dropped); a crash loses at most the last unrecorded batch
/// (4 MiB or 200 ms), which the next fetch asks for again.
pub async fn fetch_missing<S>(
    stream: S,
    store: &BlobStore,
    hash: BlobHash,
    size: u64,
    mut progress: impl FnMut(Progress),
) -> Result<FetchOutcome, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = buffered(stream);
    store.create_partial(hash, size)?;
    let missing = store.missing(hash)?;
    if missing.is_empty() {
        return Ok(FetchOutcome {
            bytes_received: 0,
            bytes_written: 0,
            complete: true,
        });
    }
    let metrics = store.metrics().clone();
    let mut writer = store.writer(hash)?;
    let _active = GaugeGuard::new(&metrics.active_downloads);
    let mut ranges = ChunkRanges::empty();
    let mut wanted = 0;
    for r in &missing {
        wanted += r.end - r.start;
        ranges |= ChunkRanges::from(ChunkNum(r.start / 1024)..ChunkNum(r.end.div_ceil(1024)));
    }
    let request = Request {
        hash: *hash.as_bytes(),
        size: Some(size),
        ranges: ranges.clone(),
    };
    stream.write_all(&request.encode()).await?;
    stream.flush().await?;

    let mut reader = StreamReader {
        inner: &mut stream,
        counter: &metrics.bytes_received,
        local: 0,
    };
    let status = iroh_io::AsyncStreamReader::read::<1>(&mut reader).await?;
    match Status::from_byte(status[0]) {
        Some(Status::Ok) => {}
        Some(status) => return Err(FetchError::Refused { status }),
        None => return Err(FetchError::BadResponse("unknown status byte")),
    }
    let their_size = u64::from_le_bytes(iroh_io::AsyncStreamReader::read::<8>(&mut reader).await?);
    if their_size != size {
        return Err(FetchError::BadResponse("holder announced another size"));
    }

    let (received, written) =
        receive_ranges(reader, &mut writer, hash, ranges, &metrics, |written| {
            progress(Progress { written, wanted });
        })
        .await?;
    Ok(FetchOutcome {
        bytes_received: received,
        bytes_written: written,
        complete: writer.is_complete(),
    })
}

/// Decodes the bao encoding of `ranges` from `reader`, verifying every hash pair and chunk group
/// against `hash` before writing it with `writer`; returns (bytes read, verified bytes written).
/// On failure whatever verified before it is still recorded.
async fn receive_ranges<R: AsyncBufRead + Unpin>(
    reader: StreamReader<'_, R>,
    writer: &mut PartialWriter,
    hash: BlobHash,
    ranges: ChunkRanges,
    metrics: &crate::BlobMetrics,
    mut progress: impl FnMut(u64),
) -> Result<(u64, u64), FetchError> {
    let root = blake3::Hash::from_bytes(*hash.as_bytes());
    let mut decoder = ResponseDecoder::new(root, ranges, writer.tree(), reader);
    let mut written = 0u64;
    let failure = loop {
        let (next, item) = match decoder.next().await {
            ResponseDecoderNext::More(more) => more,
            ResponseDecoderNext::Done(reader) => {
                writer.flush()?;
                return Ok((reader.local, written));
            }
        };
        decoder = next;
        let stored = match item {
            Ok(BaoContentItem::Parent(Parent { node, pair })) => writer.write_parent(node, &pair),
            Ok(BaoContentItem::Leaf(Leaf { offset, data })) => {
                let r = writer.write_leaf(offset, &data);
                if r.is_ok() {
                    written += data.len() as u64;
                    progress(written);
                    writer.room().await;
                }
                r
            }
            Err(e) => break decode_failure(e, hash, written, metrics),
        };
        if let Err(e) = stored {
            break FetchError::Store(e);
        }
    };
    // Keep what was verified before the failure; a failing flush (e.g. a full disk) only means
    // those groups stay missing.
    if let Err(e) = writer.flush() {
        tracing::warn!(%hash, error = %e, "could not record verified ranges after a failed transfer");
    }
    Err(failure)
}

fn decode_failure(
    e: DecodeError,
    hash: BlobHash,
    written: u64,
    metrics: &crate::BlobMetrics,
) -> FetchError {
    let rejected = |offset| {
        metrics.ranges_rejected.fetch_add(1, Ordering::Relaxed);
        FetchError::Rejected { hash, offset }
    };
    match e {
        DecodeError::LeafHashMismatch(chunk) => rejected(chunk.to_bytes()),
        DecodeError::ParentHashMismatch(node) => rejected(node.chunk_range().start.to_bytes()),
        DecodeError::LeafNotFound(_) | DecodeError::ParentNotFound(_) => {
            FetchError::Truncated { hash, written }
        }
        DecodeError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            FetchError::Truncated { hash, written }
        }
        DecodeError::Io(e) => FetchError::Io(e),
    }
}

/// What a [`push`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    /// Ciphertext bytes the holder still lacked and was sent (0: it held it all already).
    pub bytes_sent: u64,
    /// Whether the holder now has the whole blob.
    pub complete: bool,
}

/// Why a push stopped. The holder keeps what it verified, so a retry sends only the rest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The holder refused (a full quota, not its user, busy), with its reason.
    #[error("{reason} ({status:?})")]
    Refused {
        /// Its answer.
        status: Status,
        /// Its reason, for the user.
        reason: String,
    },
    /// The holder's answer was malformed.
    #[error("malformed answer from holder: {0}")]
    BadResponse(&'static str),
    /// The local store failed (the blob is not here, or not complete).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream failed.
    #[error("blob stream i/o: {0}")]
    Io(#[from] io::Error),
}

/// Offers the complete blob `hash` from `store` to the holder on `stream` (a relay keeping it
/// for the user named by `tag`), and sends the ranges it says it lacks. `progress` gets the
/// ciphertext bytes sent so far and the bytes wanted.
pub async fn push<S>(
    stream: S,
    store: &BlobStore,
    hash: BlobHash,
    tag: &[u8],
    mut progress: impl FnMut(Progress) + Send,
) -> Result<PushOutcome, PushError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = buffered(stream);
    if !store.is_complete(hash)? {
        return Err(StoreError::Incomplete {
            hash,
            missing: store.missing(hash)?.iter().map(|r| r.end - r.start).sum(),
        }
        .into());
    }
    let reader = store.reader(hash)?;
    let metrics = store.metrics().clone();
    let request = HoldRequest {
        hash: *hash.as_bytes(),
        size: reader.size,
        tag: tag.to_vec(),
    };
    let frame = request.encode();
    stream.write_all(&frame).await?;
    stream.flush().await?;
    metrics
        .bytes_sent
        .fetch_add(frame.len() as u64, Ordering::Relaxed);
    read_status(&mut stream).await?;
    // The wanted ranges: re-encoded while read, then decoded by the same rules as requests.
    let mut raw = Vec::new();
    let n = read_varint(&mut stream).await?;
    if n > MAX_RANGES as u64 {
        return Err(PushError::BadResponse("holder wants too many ranges"));
    }
    crate::wire::put_varint(&mut raw, n);
    for _ in 0..2 * n {
        let v = read_varint(&mut stream).await?;
        crate::wire::put_varint(&mut raw, v);
    }
    let ranges = crate::wire::decode_ranges(&raw)
        .map_err(|_| PushError::BadResponse("holder sent invalid ranges"))?;
    let chunks = ChunkNum::chunks(reader.size).0;
    if ranges.boundaries().last().is_some_and(|end| end.0 > chunks) {
        return Err(PushError::BadResponse("holder wants ranges past the end"));
    }
    let mut wanted = 0u64;
    for pair in ranges.boundaries().chunks(2) {
        if let [start, end] = pair {
            wanted += end.to_bytes().min(reader.size) - start.to_bytes().min(reader.size);
        }
    }
    let mut sent = 0u64;
    let served = reader.served.clone();
    if !ranges.is_empty() {
        let _active = GaugeGuard::new(&metrics.active_uploads);
        let mut report = |n: u64| {
            sent = n;
            progress(Progress { written: n, wanted });
        };
        let writer = StreamWriter {
            inner: &mut stream,
            counter: &metrics.bytes_sent,
            progress: Some(&mut report),
            written: 0,
            also: Some(&served),
        };
        bao_tree::io::fsm::encode_ranges_validated(reader.data, reader.outboard, &ranges, writer)
            .await
            .map_err(|e| match e {
                EncodeError::Io(e) => PushError::Io(e),
                e => PushError::Io(io::Error::other(e.to_string())),
            })?;
        stream.flush().await?;
    }
    read_status(&mut stream).await?;
    let mut complete = [0u8; 1];
    stream.read_exact(&mut complete).await?;
    Ok(PushOutcome {
        bytes_sent: sent.min(wanted),
        complete: complete[0] == 1,
    })
}

/// Reads a hold answer's status; anything but `Ok` comes with a reason.
async fn read_status<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<(), PushError> {
    let mut status = [0u8; 1];
    stream.read_exact(&mut status).await?;
    let status =
        Status::from_byte(status[0]).ok_or(PushError::BadResponse("unknown status byte"))?;
    if status == Status::Ok {
        return Ok(());
    }
    let mut reason = String::new();
    // Servers from before hold requests answer one with a bare `BadRequest` and wait for the
    // next request: closing our side first ends the stream there, so the reason read below
    // sees the end instead of waiting forever.
    let _ = stream.close().await;
    if let Ok(len) = read_varint(stream).await
        && len <= MAX_REASON as u64
    {
        let mut buf = vec![0u8; len as usize];
        if stream.read_exact(&mut buf).await.is_ok() {
            reason = String::from_utf8_lossy(&buf).into_owned();
        }
    }
    if reason.is_empty() {
        reason = format!("the holder refused to keep the blob: {status:?}");
    }
    Err(PushError::Refused { status, reason })
}

async fn read_varint<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<u64> {
    match read_frame_len(stream).await? {
        FrameLen::Len(v) => Ok(v),
        FrameLen::Closed => Err(io::ErrorKind::UnexpectedEof.into()),
        FrameLen::Invalid => Err(io::Error::new(io::ErrorKind::InvalidData, "bad varint")),
    }
}
