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
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::io::{StreamReader, StreamWriter};
use crate::metrics::GaugeGuard;
use crate::store::{BlobHash, BlobStore, GROUP_BYTES, StoreError};
use crate::wire::{Request, Status};

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
/// Cancel-safe: dropping the future just drops the stream.
pub async fn serve<S>(
    mut stream: S,
    store: &BlobStore,
    limits: &ServeLimits,
) -> Result<ServeSummary, ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
        let request = match Request::decode(&body) {
            Ok(r) => r,
            Err(reason) => {
                tracing::debug!(%reason, "refusing undecodable blob request");
                refuse(&mut stream, store, Status::BadRequest).await?;
                summary.refused += 1;
                continue;
            }
        };
        let hash = BlobHash::from_bytes(request.hash);
        let reader = match check(store, &request) {
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
        let writer = StreamWriter {
            inner: &mut stream,
            counter: &metrics.bytes_sent,
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
                let offset = chunk.to_bytes() / GROUP_BYTES * GROUP_BYTES;
                metrics.local_corruption.fetch_add(1, Ordering::Relaxed);
                store.forget_group(hash, offset / GROUP_BYTES)?;
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
/// Cancel-safe for the store: dropping the future loses at most the last unrecorded batch
/// (4 MiB), which the next fetch asks for again.
pub async fn fetch_missing<S>(
    mut stream: S,
    store: &BlobStore,
    hash: BlobHash,
    size: u64,
    mut progress: impl FnMut(Progress),
) -> Result<FetchOutcome, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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

    let root = blake3::Hash::from_bytes(*hash.as_bytes());
    let mut decoder = ResponseDecoder::new(root, ranges, writer.tree(), reader);
    let mut written = 0u64;
    let failure = loop {
        let (next, item) = match decoder.next().await {
            ResponseDecoderNext::More(more) => more,
            ResponseDecoderNext::Done(reader) => {
                writer.flush()?;
                return Ok(FetchOutcome {
                    bytes_received: reader.local,
                    bytes_written: written,
                    complete: writer.is_complete(),
                });
            }
        };
        decoder = next;
        let stored = match item {
            Ok(BaoContentItem::Parent(Parent { node, pair })) => writer.write_parent(node, &pair),
            Ok(BaoContentItem::Leaf(Leaf { offset, data })) => {
                let r = writer.write_leaf(offset, &data);
                if r.is_ok() {
                    written += data.len() as u64;
                    progress(Progress { written, wanted });
                }
                r
            }
            Err(e) => break decode_failure(e, hash, written, &metrics),
        };
        if let Err(e) = stored {
            break FetchError::Store(e);
        }
    };
    // Keep what was verified before the failure; a failing flush (e.g. a full disk) only means
    // those groups stay missing.
    if let Err(e) = writer.flush() {
        tracing::warn!(%hash, error = %e, "could not record verified ranges after a failed fetch");
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
