//! `/kith/dm/1.0.0` (one encrypted envelope, one ack) and `/kith/mailbox/1.0.0` (a mailbox
//! request to a relay, its answer): one request and one response per stream.
//!
//! Frames are an unsigned-varint length followed by that many bytes (see [`crate::frame`]), the
//! same framing as libp2p's own prost codecs. This crate treats the bytes as opaque: `kith-service` decodes them (prost
//! types never cross the boundary), so a malformed body is its business, while an oversized or
//! truncated frame is refused here, before anything is buffered.

use std::io;

use futures::{AsyncRead, AsyncWrite};
use libp2p::{StreamProtocol, request_response};
use prometheus_client::metrics::counter::Counter;

pub use crate::frame::encode_frame;
use crate::frame::{read_frame, write_frame};

/// The protocol name.
pub const PROTOCOL: &str = "/kith/dm/1.0.0";
/// Largest request frame (an envelope): 256 KiB.
pub const MAX_REQUEST: usize = 256 * 1024;
/// Largest response frame (an ack).
pub const MAX_RESPONSE: usize = 4 * 1024;
/// The mailbox protocol name.
pub const MAILBOX_PROTOCOL: &str = "/kith/mailbox/1.0.0";
/// Largest mailbox request (a deposit: an envelope plus the recipient).
pub const MAILBOX_MAX_REQUEST: usize = MAX_REQUEST + 1024;
/// Largest mailbox response (a page of held envelopes).
pub const MAILBOX_MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// The group catch-up protocol name.
pub const SYNC_PROTOCOL: &str = "/kith/sync/1.0.0";
/// Largest sync request (the sender heads of one group).
pub const SYNC_MAX_REQUEST: usize = 64 * 1024;
/// Largest sync response (a page of envelopes).
pub const SYNC_MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// Length-prefixed opaque frames with size caps.
#[derive(Debug, Clone)]
pub(crate) struct Codec {
    max_request: usize,
    max_response: usize,
    /// Counts inbound frames refused while reading (libp2p only logs those).
    rejected: Counter,
}

impl Codec {
    pub(crate) fn dm(rejected: Counter) -> Self {
        Self {
            max_request: MAX_REQUEST,
            max_response: MAX_RESPONSE,
            rejected,
        }
    }

    pub(crate) fn sync(rejected: Counter) -> Self {
        Self {
            max_request: SYNC_MAX_REQUEST,
            max_response: SYNC_MAX_RESPONSE,
            rejected,
        }
    }

    pub(crate) fn mailbox(rejected: Counter) -> Self {
        Self {
            max_request: MAILBOX_MAX_REQUEST,
            max_response: MAILBOX_MAX_RESPONSE,
            rejected,
        }
    }
}

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = read_frame(io, self.max_request).await;
        if let Err(e) = &frame {
            self.rejected.inc();
            tracing::info!(error = %e, "refused an inbound frame");
        }
        frame
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, self.max_request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, self.max_response).await
    }
}
