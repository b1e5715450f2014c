//! `/kith/blob/1.0.0`: raw streams for file transfer.
//!
//! Files do not fit request-response (1 MiB requests, 10 MiB responses and a 10 s timeout by
//! default), so blob ranges travel on plain streams opened through `libp2p-stream`. The stream's
//! [`Control`](libp2p_stream::Control) lives outside the event loop: opening or accepting a stream
//! never waits on the loop's command channel, and the bytes never pass through it. What is said
//! on a stream is kith-blob's business; this module only hands streams out, as types that do not
//! leak libp2p's.

use std::{
    collections::HashMap,
    fmt, io,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::{PeerId, StreamProtocol};

use crate::RequestError;

/// The protocol name blobs are served and fetched under.
pub const BLOB_PROTOCOL: &str = "/kith/blob/1.0.0";

/// One open blob stream to or from a peer: bytes both ways, closed by dropping or `close`.
pub struct BlobStream {
    stream: libp2p::Stream,
    /// Held only for its `Drop`, which un-counts the stream.
    _in_use: InUse,
}

/// Open streams of one kind (blob streams, direct-message links) per peer. The streams bypass
/// the event loop, so the connection manager reads this (a std mutex held for a counter update,
/// never across an await) to keep a connection with a transfer or a conversation on it.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamUse(Arc<Mutex<HashMap<PeerId, usize>>>);

impl StreamUse {
    pub(crate) fn open(&self, peer: PeerId) -> InUse {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(peer)
            .or_default() += 1;
        InUse {
            peer,
            uses: self.clone(),
        }
    }

    /// How many streams of this kind `peer` has open.
    pub(crate) fn count(&self, peer: &PeerId) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .copied()
            .unwrap_or(0)
    }

    /// Peers with at least one open stream of this kind.
    pub(crate) fn peers(&self) -> Vec<PeerId> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }
}

/// Counts one open stream in [`StreamUse`] until dropped.
pub(crate) struct InUse {
    peer: PeerId,
    uses: StreamUse,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut uses = self.uses.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = uses.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                uses.remove(&self.peer);
            }
        }
    }
}

impl fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlobStream")
    }
}

impl AsyncRead for BlobStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for BlobStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}

/// Blob streams other peers open to this node, in arrival order.
pub struct IncomingBlobStreams(libp2p_stream::IncomingStreams, StreamUse);

impl fmt::Debug for IncomingBlobStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IncomingBlobStreams")
    }
}

impl IncomingBlobStreams {
    /// The next inbound stream and who opened it; `None` once the node has shut down.
    pub async fn next(&mut self) -> Option<(PeerId, BlobStream)> {
        let (peer, stream) = self.0.next().await?;
        Some((
            peer,
            BlobStream {
                stream,
                _in_use: self.1.open(peer),
            },
        ))
    }
}

/// The handle the [`Client`](crate::Client) keeps: opens and accepts blob streams.
#[derive(Clone)]
pub(crate) struct BlobStreams(libp2p_stream::Control, StreamUse);

impl fmt::Debug for BlobStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlobStreams")
    }
}

impl BlobStreams {
    pub(crate) fn new(control: libp2p_stream::Control, uses: StreamUse) -> Self {
        Self(control, uses)
    }

    pub(crate) async fn open(&self, peer: PeerId) -> Result<BlobStream, RequestError> {
        let mut control = self.0.clone();
        control
            .open_stream(peer, StreamProtocol::new(BLOB_PROTOCOL))
            .await
            .map(|stream| BlobStream {
                stream,
                _in_use: self.1.open(peer),
            })
            .map_err(|e| RequestError::Undelivered(format!("blob stream to {peer}: {e}")))
    }

    pub(crate) fn accept(&self) -> Result<IncomingBlobStreams, RequestError> {
        let mut control = self.0.clone();
        control
            .accept(StreamProtocol::new(BLOB_PROTOCOL))
            .map(|streams| IncomingBlobStreams(streams, self.1.clone()))
            .map_err(|_| RequestError::AlreadyAccepting)
    }
}
