//! `/kith/dm/1.0.0` (one encrypted envelope, one ack) and `/kith/mailbox/1.0.0` (a mailbox
//! request to a relay, its answer): one request and one response per stream.
//!
//! Frames are an unsigned-varint length followed by that many bytes, the same framing as libp2p's
//! own prost codecs. This crate treats the bytes as opaque: `kith-service` decodes them (prost
//! types never cross the boundary), so a malformed body is its business, while an oversized or
//! truncated frame is refused here, before anything is buffered.

use std::io;

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::{StreamProtocol, request_response};
use prometheus_client::metrics::counter::Counter;

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

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len: u64 = 0;
    let mut shift = 0;
    loop {
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await?;
        len |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame length varint too long",
            ));
        }
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes exceeds the {max}-byte limit",
                bytes.len()
            ),
        ));
    }
    let prefix = varint_prefix(bytes.len());
    io.write_all(&prefix).await?;
    io.write_all(bytes).await?;
    io.close().await
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

/// Encodes a frame the way the codec writes it (for tests that speak the protocol by hand).
pub fn encode_frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = varint_prefix(bytes.len());
    out.extend_from_slice(bytes);
    out
}

/// The unsigned-varint length prefix of a frame.
fn varint_prefix(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    let mut n = len as u64;
    loop {
        let mut byte = (n & 0x7f) as u8;
        n >>= 7;
        if n != 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_caps_hold() {
        let mut buf = Cursor::new(Vec::new());
        write_frame(&mut buf, b"hello", 16).await.unwrap();
        assert_eq!(buf.get_ref(), &encode_frame(b"hello"));
        let mut read = Cursor::new(buf.into_inner());
        assert_eq!(read_frame(&mut read, 16).await.unwrap(), b"hello");

        // Oversized on write and on read.
        let mut sink = Cursor::new(Vec::new());
        assert!(write_frame(&mut sink, &[0u8; 17], 16).await.is_err());
        let mut big = Cursor::new(encode_frame(&[0u8; 300]));
        let err = read_frame(&mut big, 256).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // Truncated body and endless varint.
        let mut short = Cursor::new(vec![10, 1, 2]);
        assert!(read_frame(&mut short, 256).await.is_err());
        let mut endless = Cursor::new(vec![0xff; 20]);
        assert!(read_frame(&mut endless, 256).await.is_err());
    }

    #[test]
    fn length_prefix_is_a_varint() {
        let frame = encode_frame(&[7u8; 300]);
        assert_eq!(&frame[..2], &[0xac, 0x02]);
        assert_eq!(frame.len(), 302);
    }
}
