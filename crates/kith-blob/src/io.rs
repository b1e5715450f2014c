//! Adapters between bao-tree's async io traits (from `iroh-io`) and what kith has: a `futures`
//! byte stream (a libp2p stream) and plain `std::fs::File`s.
//!
//! File reads and writes here are positioned and synchronous: one chunk group (16 KiB) at a time,
//! served from the page cache in the common case, so they do not justify a thread hop each.
//! The store's fsyncs happen once per batch (see `store::FLUSH_EVERY`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use iroh_io::{AsyncSliceReader, AsyncStreamReader, AsyncStreamWriter};

/// A file read at offsets, for bao-tree's encoder (data and outboard).
#[derive(Debug)]
pub(crate) struct FileSlice(pub(crate) File);

impl AsyncSliceReader for FileSlice {
    async fn read_at(&mut self, offset: u64, len: usize) -> io::Result<Bytes> {
        let size = self.0.metadata()?.len();
        let available = size.saturating_sub(offset);
        let len = len.min(usize::try_from(available).unwrap_or(usize::MAX));
        let mut buf = vec![0u8; len];
        self.0.read_exact_at(&mut buf, offset)?;
        Ok(buf.into())
    }

    async fn size(&mut self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

/// Reads a `futures` stream for bao-tree's decoder, counting every byte into `counter` (the
/// metrics' `bytes_received`) and `local` (this transfer's own count).
pub(crate) struct StreamReader<'a, R> {
    pub(crate) inner: &'a mut R,
    pub(crate) counter: &'a AtomicU64,
    pub(crate) local: u64,
}

impl<R: AsyncRead + Unpin> StreamReader<'_, R> {
    fn count(&mut self, n: usize) {
        self.local += n as u64;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl<R: AsyncRead + Unpin> AsyncStreamReader for StreamReader<'_, R> {
    async fn read_bytes(&mut self, len: usize) -> io::Result<Bytes> {
        // bao-tree asks for one chunk group or one hash pair at a time; cap the allocation anyway.
        let mut buf = vec![0u8; len.min(1 << 20)];
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.inner.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        self.count(filled);
        Ok(buf.into())
    }

    async fn read<const L: usize>(&mut self) -> io::Result<[u8; L]> {
        let mut buf = [0u8; L];
        self.inner.read_exact(&mut buf).await?;
        self.count(L);
        Ok(buf)
    }
}

/// Writes bao-tree's encoder output to a `futures` stream, counting into `counter` (the metrics'
/// `bytes_sent`).
pub(crate) struct StreamWriter<'a, W> {
    pub(crate) inner: &'a mut W,
    pub(crate) counter: &'a AtomicU64,
    /// Told the bytes written so far (a push's progress bar).
    pub(crate) progress: Option<&'a mut (dyn FnMut(u64) + Send)>,
    /// Bytes written through this writer.
    pub(crate) written: u64,
    /// Also counts here (the served blob's own counter).
    pub(crate) also: Option<&'a AtomicU64>,
}

impl<W: AsyncWrite + Unpin> AsyncStreamWriter for StreamWriter<'_, W> {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.write_all(data).await?;
        self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(also) = self.also {
            also.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if let Some(progress) = self.progress.as_mut() {
            self.written += data.len() as u64;
            progress(self.written);
        }
        Ok(())
    }

    async fn write_bytes(&mut self, data: Bytes) -> io::Result<()> {
        self.write(&data).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.inner.flush().await
    }
}
