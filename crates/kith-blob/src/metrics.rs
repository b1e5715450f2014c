//! Counters the node exports as metrics; plain atomics so this crate needs no metrics library.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::wire::Status;

/// Transfer counters shared by a [`crate::BlobStore`] and every transfer that uses it; the node
/// reads them into its Prometheus registry.
#[derive(Debug, Default)]
pub struct BlobMetrics {
    /// Bytes written to peers by `serve` (status, size and bao-encoded ranges).
    pub bytes_sent: AtomicU64,
    /// Bytes read from peers by `fetch_missing` (bao-encoded ranges, including the ones rejected).
    pub bytes_received: AtomicU64,
    /// Ranges a provider sent that failed verification and were not written.
    pub ranges_rejected: AtomicU64,
    /// Requests refused because they did not decode.
    pub refused_bad_request: AtomicU64,
    /// Requests refused because the frame exceeded the size cap.
    pub refused_too_large: AtomicU64,
    /// Requests for a blob this store does not have (or has with another size).
    pub refused_unknown_blob: AtomicU64,
    /// Requests for ranges past the end of the blob.
    pub refused_out_of_range: AtomicU64,
    /// Requests for ranges this store has not verified yet.
    pub refused_not_held: AtomicU64,
    /// Requests refused because too many uploads were running.
    pub refused_busy: AtomicU64,
    /// Hold requests refused because the recipient's quota (or the disk) was full.
    pub refused_full: AtomicU64,
    /// Hold requests refused because this node keeps no blobs for that recipient.
    pub refused_not_accepted: AtomicU64,
    /// Chunk groups this store found corrupt on its own disk while serving (they are dropped from
    /// the "have" record and fetched again later).
    pub local_corruption: AtomicU64,
    /// Uploads (`serve` sending ranges) running now.
    pub active_uploads: AtomicU64,
    /// Downloads (`fetch_missing`) running now.
    pub active_downloads: AtomicU64,
}

impl BlobMetrics {
    /// Counts a refused request under its reason.
    pub(crate) fn refused(&self, status: Status) {
        let counter = match status {
            Status::Ok => return,
            Status::UnknownBlob => &self.refused_unknown_blob,
            Status::OutOfRange => &self.refused_out_of_range,
            Status::Busy => &self.refused_busy,
            Status::NotHeld => &self.refused_not_held,
            Status::BadRequest => &self.refused_bad_request,
            Status::TooLarge => &self.refused_too_large,
            Status::Full => &self.refused_full,
            Status::NotAccepted => &self.refused_not_accepted,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Total refused requests, all reasons together.
    pub fn refused_total(&self) -> u64 {
        [
            &self.refused_bad_request,
            &self.refused_too_large,
            &self.refused_unknown_blob,
            &self.refused_out_of_range,
            &self.refused_not_held,
            &self.refused_busy,
            &self.refused_full,
            &self.refused_not_accepted,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Increments a gauge for as long as it lives, so an aborted transfer never leaves it raised.
pub(crate) struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    pub(crate) fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
